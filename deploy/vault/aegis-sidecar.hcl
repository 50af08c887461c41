# Vault/OpenBao ACL policy for the Aegis SIDECAR (`aegis serve`), least privilege for
# ONE Transit key: "model-sign" on the Transit mount "transit", with its retention
# record in the KV v2 mount "secret" under the default prefix "aegis/keys".
#
# What the sidecar calls, and nothing more:
#   - sign:    POST transit/sign/model-sign and transit/sign/model-sign/<hash>
#   - verify:  POST transit/verify/model-sign[/<hash>] (only what it cannot verify
#              locally, e.g. HMAC or derived keys; harmless to allow)
#   - keys:    GET  transit/keys/model-sign (public keys of the versions Vault holds)
#   - record:  GET  secret/data/aegis/keys/transit/model-sign (the retention record,
#              so versions retired by `aegis rotate` keep verifying until retire_after;
#              it is required: an unreadable record fails closed, the key is not
#              loaded, /readyz and requests for the key say "reading the retention
#              record secret/data/aegis/keys/transit/model-sign: permission denied")
#   - endorsement key: GET transit/keys/aegis-retention.model-sign (its public keys:
#              the sidecar verifies the record's endorsement locally; required like the
#              record: unreadable fails closed). Read only: the sidecar can never sign
#              a record, so a stolen sidecar token cannot endorse a forged one.
#   - watch:   LIST secret/detailed-metadata/aegis/keys/transit/ (OpenBao 2.2+), once per
#              AEGIS_KEYSET_WATCH_INTERVAL (8 s): the metadata (versions, times, never the
#              data) of every record in the folder, so one call shows a rotation, retirement
#              or revocation of any key within seconds. It also shows the names of the
#              other keys that have records there (use one AEGIS_RETENTION_PREFIX per team
#              to keep them apart). Without it the sidecar logs an error once and sees those
#              changes only at the full refresh (AEGIS_REFRESH_INTERVAL, 10 min).
# It never rotates, never changes key configuration, never exports, never writes KV.
#
# Token housekeeping (auth/token/lookup-self, auth/token/renew-self) comes from the
# "default" policy, which Vault attaches to every login unless the role sets
# token_no_default_policy=true: keep the default policy attached.
#
# Adapting:
#   - another key K: replace "model-sign" with K everywhere (deploy/vault/setup.sh does
#     this with KEY=K); several keys: repeat the blocks per key, or write one policy per
#     key and attach them all to the role. Do NOT widen "model-sign" to "model-sign*":
#     that also matches "model-sign-p256", "model-sign-test", ...
#   - another Transit mount M (AEGIS_TRANSIT_MOUNT=M): replace "transit/" with "M/" in
#     the first five paths AND the "/transit/" segment of the record path (the record of
#     key K lives at {kv_mount}/data/{prefix}/{transit_mount}/{K}).
#   - another KV mount or prefix (AEGIS_RETENTION_KV_MOUNT, AEGIS_RETENTION_PREFIX):
#     change "secret/data/aegis/keys" and "secret/detailed-metadata/aegis/keys"
#     accordingly; KV v2 paths always carry "/data/" (reads) or "/detailed-metadata/"
#     (the watch's listing).
#   - Vault Enterprise / OpenBao namespaces: policies are written inside the namespace,
#     paths stay relative to it.
#
# "+" matches exactly one path segment: the hash suffix ("sha2-256", "sha2-512", ...)
# of Transit's sign/verify endpoints, and nothing deeper.

path "transit/sign/model-sign" {
  capabilities = ["update"]
}

path "transit/sign/model-sign/+" {
  capabilities = ["update"]
}

path "transit/verify/model-sign" {
  capabilities = ["update"]
}

path "transit/verify/model-sign/+" {
  capabilities = ["update"]
}

path "transit/keys/model-sign" {
  capabilities = ["read"]
}

path "secret/data/aegis/keys/transit/model-sign" {
  capabilities = ["read"]
}

# The record's endorsement key ({AEGIS_RETENTION_ENDORSEMENT_PREFIX}{key}): read only.
path "transit/keys/aegis-retention.model-sign" {
  capabilities = ["read"]
}

# The keyset watch: one listing of the records' metadata for every key of the mount.
path "secret/detailed-metadata/aegis/keys/transit/" {
  capabilities = ["list"]
}
