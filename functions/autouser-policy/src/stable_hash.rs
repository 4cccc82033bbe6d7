//! A hash that never changes between releases or platforms, for values stored or shared
//! between processes: the advisory lock key of a user (the engine's `sql::user_lock_key`) and
//! the fingerprint of a session's object rules in the ledger. Its own module because both the
//! rules and the SQL use it, and neither should import the other for it.

/// FNV-1a, 64 bits: a hash that never changes between releases or platforms, for values
/// stored or shared between processes (lock keys, the rules fingerprint in the ledger).
pub fn fnv1a_64(bytes: impl IntoIterator<Item = u8>) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.into_iter().fold(OFFSET, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(PRIME))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_64_matches_the_published_test_vectors() {
        // From the FNV reference (isthe.com/chongo/tech/comp/fnv): "" and "a".
        assert_eq!(fnv1a_64([]), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a_64(*b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
