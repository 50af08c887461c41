# Vault/OpenBao ACL policy for the ROTATION JOB (`aegis rotate`, `aegis retire`,
# `aegis keys status`), least privilege for ONE Transit key: "model-sign" on the
# Transit mount "transit", with its retention record in the KV v2 mount "secret" under
# the default prefix "aegis/keys".
#
# What the job calls, and nothing more:
#   - GET  transit/keys/model-sign          read the key (versions, public keys)
#   - POST transit/keys/model-sign/rotate   rotate
#   - POST transit/keys/model-sign/config   raise min_decryption_version (only past
#                                           versions safely in the retention record),
#                                           and min_encryption_version (past a version
#                                           `aegis retire --now` revokes); no other
#                                           parameter of that endpoint
#   - LIST transit/keys                     `aegis keys status` without --key
#   - GET/POST secret/data/aegis/keys/transit/model-sign
#                                           the retention record, written with
#                                           check-and-set: the first write (cas=0)
#                                           needs "create", later ones "update"
#   - the record's endorsement key transit/keys/aegis-retention.model-sign
#     ({AEGIS_RETENTION_ENDORSEMENT_PREFIX}{key}, docs/trust-model.md): create and
#     read it, rotate it, sign with it (transit/sign/aegis-retention.model-sign: one
#     endorsement per record generation), raise its min_decryption_version and
#     min_encryption_version and trim it (so Vault forgets superseded endorsements).
#     Only this policy may sign with it: that is what makes a record trustworthy.
# No "delete" anywhere (no key deletion, no KV delete/destroy, no metadata changes:
# KV v2 metadata is not read, the version comes with the data), no sign or trim of the
# signing key, no verify, no export, no backup.
#
# Token housekeeping (auth/token/lookup-self, used to name the actor in the audit
# event and to check a given token) comes from the "default" policy, which Vault
# attaches to every login unless the role sets token_no_default_policy=true: keep the
# default policy attached.
#
# Inventory over a whole mount: "keys status" without --key lists the mount and then
# reads every key it finds AND its retention record; a key this policy cannot read
# makes the command fail with "permission denied" (exit 77). Either keep the signing
# keys in a mount of their own and list them all here, run `keys status --key K` per
# key (as deploy/kubernetes/rotation/rotation-cronjob.yaml does), or grant a read-only
# inventory over the mount with:
#   path "transit/keys/*"                     { capabilities = ["read"] }
#   path "secret/data/aegis/keys/transit/*"   { capabilities = ["read"] }
#
# Adapting: same rules as deploy/vault/aegis-sidecar.hcl (replace "model-sign" with
# the key, "transit/" and the "/transit/" segment of the record path with the Transit
# mount, "secret/data/aegis/keys" with {kv_mount}/data/{prefix}); deploy/vault/setup.sh
# renders both policies for KEY, TRANSIT_MOUNT, KV_MOUNT and RETENTION_PREFIX.

path "transit/keys/model-sign" {
  capabilities = ["read"]
}

path "transit/keys/model-sign/rotate" {
  capabilities = ["update"]
}

# Only the two minimums: the same endpoint also sets deletion_allowed,
# exportable, allow_plaintext_backup, auto_rotate_period, ... which the job never
# needs (a parameter not listed here is refused with 403).
path "transit/keys/model-sign/config" {
  capabilities = ["update"]
  allowed_parameters = {
    "min_decryption_version" = []
    "min_encryption_version" = []
  }
}

path "transit/keys" {
  capabilities = ["list"]
}

path "secret/data/aegis/keys/transit/model-sign" {
  capabilities = ["read", "create", "update"]
}

# The record's endorsement key: create (first write, ed25519 only) and read.
path "transit/keys/aegis-retention.model-sign" {
  capabilities = ["create", "read", "update"]
  allowed_parameters = {
    "type" = ["ed25519"]
  }
}

path "transit/keys/aegis-retention.model-sign/rotate" {
  capabilities = ["update"]
}

path "transit/keys/aegis-retention.model-sign/config" {
  capabilities = ["update"]
  allowed_parameters = {
    "min_decryption_version" = []
    "min_encryption_version" = []
  }
}

path "transit/keys/aegis-retention.model-sign/trim" {
  capabilities = ["update"]
}

path "transit/sign/aegis-retention.model-sign" {
  capabilities = ["update"]
}
