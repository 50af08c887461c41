# Vault/OpenBao ACL policy for `aegis sync` (deploy/kubernetes/sync), least privilege
# for the shipped sync.toml: the KV v2 secrets under secret/data/models/model-server/,
# and the public keys of ONE Transit key, "model-sign" on the mount "transit", with
# its retention record in the KV v2 mount "secret" under the default prefix
# "aegis/keys" (setup.sh renders it for other names).
#
# What the job calls, and nothing more:
#   - secrets: GET secret/data/models/model-server/<name> (one read per [[secret]] entry
#              per round; a 404 means the path is gone and its on_delete applies);
#   - keys:    GET transit/keys/model-sign, GET secret/data/aegis/keys/transit/model-sign
#              (the retention record) and GET transit/keys/aegis-retention.model-sign (the
#              record's endorsement key): what the sidecar reads to decide which versions
#              verify, so the published keys are exactly those ([[public_keys]] entries).
# Read only: it never signs, never writes KV, never lists (a KV path is read by its name,
# so the job learns nothing about other secrets of the folder).
#
# Token housekeeping (auth/token/lookup-self, auth/token/renew-self) comes from the
# "default" policy: keep it attached.
path "secret/data/models/model-server/*" {
  capabilities = ["read"]
}
path "transit/keys/model-sign" {
  capabilities = ["read"]
}
path "secret/data/aegis/keys/transit/model-sign" {
  capabilities = ["read"]
}
path "transit/keys/aegis-retention.model-sign" {
  capabilities = ["read"]
}
