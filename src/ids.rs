//! Random identifiers: the `request_id` of each answer and the id of each audit event.
//!
//! Version 4 UUIDs from `rand`'s thread-local generator (ChaCha, seeded once per thread
//! from the OS), so a request costs no `getrandom` syscall; uuid's own `fast-rng` feature
//! would do the same but pulls a second `rand` into the tree (see deny.toml).

/// A random (version 4) UUID.
pub fn uuid_v4() -> uuid::Uuid {
    uuid::Builder::from_random_bytes(rand::random()).into_uuid()
}

#[cfg(test)]
mod tests {
    #[test]
    fn version_4_and_distinct() {
        let (a, b) = (super::uuid_v4(), super::uuid_v4());
        assert_eq!(a.get_version_num(), 4);
        assert_eq!(a.get_variant(), uuid::Variant::RFC4122);
        assert_ne!(a, b);
    }
}
