#!/usr/bin/env bash
# Configures Vault/OpenBao for Aegis, idempotently (safe to run again):
#
#   1. the three least-privilege policies of this directory, rendered for one Transit key
#      (aegis-sidecar.hcl -> policy "aegis-sidecar", aegis-rotator.hcl -> "aegis-rotator",
#      aegis-sync.hcl -> "aegis-sync", with its KV folder SYNC_KV_FOLDER);
#   2. Kubernetes auth (mount "kubernetes"), with three roles, each bound to ONE service
#      account in ONE namespace and to the projected-token audience "vault":
#        - "model-server":  the sidecar (deploy/kubernetes/base),
#                           policy aegis-sidecar, token TTL 1h (renewed, max 4h);
#        - "aegis-rotator": the rotation CronJob (deploy/kubernetes/rotation),
#                           policy aegis-rotator, token TTL 10m (max 15m);
#        - "aegis-sync":    the sync CronJob (deploy/kubernetes/sync),
#                           policy aegis-sync, token TTL 10m (max 15m);
#   3. JWT auth for GitHub Actions OIDC on a mount of its own ("jwt-github": a JWT mount
#      trusts exactly one issuer, so sharing one would mean reconfiguring someone else's),
#      with the role "aegis-ci-rotate" (deploy/ci/github-actions-rotate.yml): policy
#      aegis-rotator, bound to the audience, the repository and the ref (and optionally
#      the workflow file), token TTL 10m (max 15m). Skipped unless
#      GITHUB_BOUND_REPOSITORY is set.
#
# Every role keeps Vault's "default" policy (do not set token_no_default_policy): Aegis
# uses auth/token/lookup-self (and the sidecar auth/token/renew-self), which it grants.
#
# Usage (an operator token that may write policies and auth configuration):
#
#   export VAULT_ADDR=https://vault.example:8200 VAULT_TOKEN=...   # or BAO_ADDR/BAO_TOKEN
#   NAMESPACE=ml GITHUB_BOUND_REPOSITORY=example-org/models bash deploy/vault/setup.sh
#
# Settings (environment variables; defaults in brackets):
#   BAO                          the CLI: bao or vault [bao if on PATH, else vault]
#   NAMESPACE                    Kubernetes namespace of the pods (required)
#   KEY [model-sign]             Transit key; TRANSIT_MOUNT [transit]
#   KEY_TYPE [ed25519]           type of the key if it does not exist yet (it is created)
#   KV_MOUNT [secret]            KV v2 mount of the retention records (enabled if absent)
#   RETENTION_PREFIX [aegis/keys]
#   ENDORSEMENT_PREFIX [aegis-retention.]
#                                The last five must match AEGIS_TRANSIT_MOUNT,
#                                AEGIS_RETENTION_KV_MOUNT, AEGIS_RETENTION_PREFIX and
#                                AEGIS_RETENTION_ENDORSEMENT_PREFIX of the sidecar and
#                                the job.
#   SIDECAR_POLICY [aegis-sidecar]   ROTATOR_POLICY [aegis-rotator]   SYNC_POLICY [aegis-sync]
#   SYNC_KV_FOLDER [models/model-server]  the KV folder (under KV_MOUNT) `aegis sync` reads
#   K8S_AUTH_MOUNT [kubernetes]
#   K8S_HOST [https://kubernetes.default.svc]   the Kubernetes API, as Vault reaches it
#   K8S_CA_CERT_FILE             its CA (PEM); needed when Vault runs outside the cluster
#   K8S_TOKEN_REVIEWER_JWT_FILE  a token allowed to create TokenReviews (system:auth-delegator);
#                                needed when Vault runs outside the cluster
#   K8S_RECONFIGURE [0]          1: rewrite auth/<K8S_AUTH_MOUNT>/config even if the mount
#                                existed (by default an existing mount keeps its config)
#   K8S_AUDIENCE [vault]         audience of the projected service-account tokens; set it
#                                empty only for legacy token Secrets, which carry no audience
#   SIDECAR_SA [model-server]    SIDECAR_ROLE [model-server]
#   ROTATOR_SA [aegis-rotator]   ROTATOR_ROLE [aegis-rotator]
#   SYNC_SA [aegis-sync]         SYNC_ROLE [aegis-sync]
#   JWT_AUTH_MOUNT [jwt-github]  CI_ROLE [aegis-ci-rotate]
#   GITHUB_BOUND_REPOSITORY      "owner/repo" allowed to rotate (unset: no CI role)
#   GITHUB_BOUND_REF [refs/heads/main]
#   GITHUB_BOUND_WORKFLOW_REF    optional: also bind job_workflow_ref, e.g.
#                                example-org/models/.github/workflows/rotate.yml@refs/heads/main
#   GITHUB_OIDC_AUDIENCE [$VAULT_ADDR or $BAO_ADDR]
#                                the audience the workflow requests (vars.VAULT_OIDC_AUDIENCE)
#   GITHUB_OIDC_ISSUER [https://token.actions.githubusercontent.com]
#                                (GitHub Enterprise Server: https://HOST/_services/token)
#   JWT_VALIDATION_PUBKEYS_FILE  optional: PEM public key(s) to trust instead of fetching
#                                the issuer's OIDC discovery document (air-gapped Vault)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

die() {
    echo "setup.sh: $*" >&2
    exit 1
}
say() {
    printf '==> %s\n' "$*"
}

if [[ -z "${BAO:-}" ]]; then
    if command -v bao >/dev/null 2>&1; then
        BAO=bao
    elif command -v vault >/dev/null 2>&1; then
        BAO=vault
    else
        die "neither bao nor vault is on PATH (set BAO=/path/to/bao)"
    fi
fi

: "${NAMESPACE:?set NAMESPACE to the Kubernetes namespace of the sidecar and the rotation job}"
KEY="${KEY:-model-sign}"
KEY_TYPE="${KEY_TYPE:-ed25519}"
TRANSIT_MOUNT="${TRANSIT_MOUNT:-transit}"
KV_MOUNT="${KV_MOUNT:-secret}"
RETENTION_PREFIX="${RETENTION_PREFIX:-aegis/keys}"
ENDORSEMENT_PREFIX="${ENDORSEMENT_PREFIX:-aegis-retention.}"
SIDECAR_POLICY="${SIDECAR_POLICY:-aegis-sidecar}"
ROTATOR_POLICY="${ROTATOR_POLICY:-aegis-rotator}"
SYNC_POLICY="${SYNC_POLICY:-aegis-sync}"
SYNC_KV_FOLDER="${SYNC_KV_FOLDER:-models/model-server}"
K8S_AUTH_MOUNT="${K8S_AUTH_MOUNT:-kubernetes}"
K8S_HOST="${K8S_HOST:-https://kubernetes.default.svc}"
K8S_RECONFIGURE="${K8S_RECONFIGURE:-0}"
K8S_AUDIENCE="${K8S_AUDIENCE-vault}" # set but empty: no audience binding
SIDECAR_SA="${SIDECAR_SA:-model-server}"
SIDECAR_ROLE="${SIDECAR_ROLE:-model-server}"
ROTATOR_SA="${ROTATOR_SA:-aegis-rotator}"
ROTATOR_ROLE="${ROTATOR_ROLE:-aegis-rotator}"
SYNC_SA="${SYNC_SA:-aegis-sync}"
SYNC_ROLE="${SYNC_ROLE:-aegis-sync}"
JWT_AUTH_MOUNT="${JWT_AUTH_MOUNT:-jwt-github}"
CI_ROLE="${CI_ROLE:-aegis-ci-rotate}"
GITHUB_BOUND_REF="${GITHUB_BOUND_REF:-refs/heads/main}"
GITHUB_OIDC_ISSUER="${GITHUB_OIDC_ISSUER:-https://token.actions.githubusercontent.com}"
GITHUB_OIDC_AUDIENCE="${GITHUB_OIDC_AUDIENCE:-${VAULT_ADDR:-${BAO_ADDR:-}}}"

for name in KEY TRANSIT_MOUNT KV_MOUNT RETENTION_PREFIX ENDORSEMENT_PREFIX SYNC_KV_FOLDER; do
    # Policy paths are rendered with sed and quoted in HCL and JSON: keep them plain.
    [[ "${!name}" =~ ^[A-Za-z0-9._/-]+$ ]] || die "$name=${!name}: only letters, digits and . _ / - are supported"
done
TRANSIT_MOUNT="${TRANSIT_MOUNT%/}"
KV_MOUNT="${KV_MOUNT%/}"
RETENTION_PREFIX="${RETENTION_PREFIX#/}"
RETENTION_PREFIX="${RETENTION_PREFIX%/}"
SYNC_KV_FOLDER="${SYNC_KV_FOLDER#/}"
SYNC_KV_FOLDER="${SYNC_KV_FOLDER%/}"

# The policy files are written for model-sign on transit with records under
# secret/data/aegis/keys; render them for the configured key and mounts.
render() {
    sed -e "s|\"secret/data/models/model-server/\*\"|\"${KV_MOUNT}/data/${SYNC_KV_FOLDER}/*\"|" \
        -e "s|\"secret/data/aegis/keys/transit/model-sign\"|\"${KV_MOUNT}/data/${RETENTION_PREFIX}/${TRANSIT_MOUNT}/${KEY}\"|" \
        -e "s|\"secret/detailed-metadata/aegis/keys/transit/\"|\"${KV_MOUNT}/detailed-metadata/${RETENTION_PREFIX}/${TRANSIT_MOUNT}/\"|" \
        -e "s|\"transit/keys\"|\"${TRANSIT_MOUNT}/keys\"|" \
        -e "s|\"transit/\\([a-z]*\\)/aegis-retention\\.model-sign|\"${TRANSIT_MOUNT}/\\1/${ENDORSEMENT_PREFIX}${KEY}|" \
        -e "s|\"transit/\\([a-z]*\\)/model-sign|\"${TRANSIT_MOUNT}/\\1/${KEY}|" \
        "$1"
}

# JSON string literal (the values checked above and role names need no more than this).
json_str() {
    local s="${1//\\/\\\\}"
    printf '"%s"' "${s//\"/\\\"}"
}

# Whether "$1/" is listed by `$BAO <auth|secrets> list`.
# (Not a pipe into grep -q: with pipefail, grep quitting early would fail the CLI.)
mounted() {
    local list
    list="$("$BAO" "$2" list -format=json)"
    grep -qF "\"$1/\":" <<<"$list"
}

say "policies $SIDECAR_POLICY, $ROTATOR_POLICY and $SYNC_POLICY for $TRANSIT_MOUNT/keys/$KEY"
render "$here/aegis-sidecar.hcl" | "$BAO" policy write "$SIDECAR_POLICY" -
render "$here/aegis-rotator.hcl" | "$BAO" policy write "$ROTATOR_POLICY" -
render "$here/aegis-sync.hcl" | "$BAO" policy write "$SYNC_POLICY" -

say "Transit mount $TRANSIT_MOUNT, key $KEY; KV v2 mount $KV_MOUNT"
if ! mounted "$TRANSIT_MOUNT" secrets; then
    "$BAO" secrets enable -path="$TRANSIT_MOUNT" transit
fi
if ! "$BAO" read "$TRANSIT_MOUNT/keys/$KEY" >/dev/null 2>&1; then
    "$BAO" write -f "$TRANSIT_MOUNT/keys/$KEY" type="$KEY_TYPE"
fi
if ! mounted "$KV_MOUNT" secrets; then
    "$BAO" secrets enable -path="$KV_MOUNT" -version=2 kv
fi

say "Kubernetes auth at auth/$K8S_AUTH_MOUNT"
k8s_new=0
if ! mounted "$K8S_AUTH_MOUNT" auth; then
    "$BAO" auth enable -path="$K8S_AUTH_MOUNT" kubernetes
    k8s_new=1
fi
if [[ "$k8s_new" == 1 || "$K8S_RECONFIGURE" == 1 ]]; then
    config=(kubernetes_host="$K8S_HOST")
    if [[ -n "${K8S_CA_CERT_FILE:-}" ]]; then
        # Vault outside the cluster: it has no service-account CA or token of its own.
        config+=(kubernetes_ca_cert=@"$K8S_CA_CERT_FILE" disable_local_ca_jwt=true)
    fi
    if [[ -n "${K8S_TOKEN_REVIEWER_JWT_FILE:-}" ]]; then
        config+=(token_reviewer_jwt=@"$K8S_TOKEN_REVIEWER_JWT_FILE")
    fi
    "$BAO" write "auth/$K8S_AUTH_MOUNT/config" "${config[@]}"
else
    echo "auth/$K8S_AUTH_MOUNT existed: its config is kept (K8S_RECONFIGURE=1 to rewrite it)"
fi
# One service account in one namespace per role; the projected token must carry the
# audience (a token minted for another audience is refused). Short TTLs: the sidecar
# renews and logs in again by itself; the job needs its token for seconds.
"$BAO" write "auth/$K8S_AUTH_MOUNT/role/$SIDECAR_ROLE" \
    bound_service_account_names="$SIDECAR_SA" \
    bound_service_account_namespaces="$NAMESPACE" \
    audience="$K8S_AUDIENCE" \
    token_policies="$SIDECAR_POLICY" \
    token_ttl=1h token_max_ttl=4h
"$BAO" write "auth/$K8S_AUTH_MOUNT/role/$ROTATOR_ROLE" \
    bound_service_account_names="$ROTATOR_SA" \
    bound_service_account_namespaces="$NAMESPACE" \
    audience="$K8S_AUDIENCE" \
    token_policies="$ROTATOR_POLICY" \
    token_ttl=10m token_max_ttl=15m
"$BAO" write "auth/$K8S_AUTH_MOUNT/role/$SYNC_ROLE" \
    bound_service_account_names="$SYNC_SA" \
    bound_service_account_namespaces="$NAMESPACE" \
    audience="$K8S_AUDIENCE" \
    token_policies="$SYNC_POLICY" \
    token_ttl=10m token_max_ttl=15m

if [[ -z "${GITHUB_BOUND_REPOSITORY:-}" ]]; then
    say "GitHub Actions role skipped (set GITHUB_BOUND_REPOSITORY=owner/repo to create it)"
    exit 0
fi
[[ -n "$GITHUB_OIDC_AUDIENCE" ]] || die "set GITHUB_OIDC_AUDIENCE (or VAULT_ADDR) for the GitHub Actions role"

say "JWT auth at auth/$JWT_AUTH_MOUNT for $GITHUB_OIDC_ISSUER, role $CI_ROLE"
if ! mounted "$JWT_AUTH_MOUNT" auth; then
    "$BAO" auth enable -path="$JWT_AUTH_MOUNT" jwt
fi
if [[ -n "${JWT_VALIDATION_PUBKEYS_FILE:-}" ]]; then
    "$BAO" write "auth/$JWT_AUTH_MOUNT/config" \
        jwt_validation_pubkeys=@"$JWT_VALIDATION_PUBKEYS_FILE" \
        bound_issuer="$GITHUB_OIDC_ISSUER"
else
    # Vault fetches the issuer's discovery document and keys (JWKS) itself.
    "$BAO" write "auth/$JWT_AUTH_MOUNT/config" \
        oidc_discovery_url="$GITHUB_OIDC_ISSUER" \
        bound_issuer="$GITHUB_OIDC_ISSUER"
fi
# bound_claims are ANDed: this repository, this ref (and this workflow file if given).
# Pull requests from forks get no ID token with id-token: write from a fork, and their
# ref is refs/pull/N/merge anyway. Consider binding repository_id / repository_owner_id
# as well: unlike names, they survive a rename and cannot be re-registered by others.
claims="\"repository\": $(json_str "$GITHUB_BOUND_REPOSITORY"), \"ref\": $(json_str "$GITHUB_BOUND_REF")"
if [[ -n "${GITHUB_BOUND_WORKFLOW_REF:-}" ]]; then
    claims+=", \"job_workflow_ref\": $(json_str "$GITHUB_BOUND_WORKFLOW_REF")"
fi
"$BAO" write "auth/$JWT_AUTH_MOUNT/role/$CI_ROLE" - <<EOF
{
  "role_type": "jwt",
  "user_claim": "sub",
  "bound_audiences": [$(json_str "$GITHUB_OIDC_AUDIENCE")],
  "bound_claims_type": "string",
  "bound_claims": { $claims },
  "token_policies": [$(json_str "$ROTATOR_POLICY")],
  "token_ttl": "10m",
  "token_max_ttl": "15m"
}
EOF

say "done"
