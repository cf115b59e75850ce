//! The Redis Cluster slot of a key or shard channel: CRC16-XMODEM of its hash tag (or of the
//! whole name when it has none) mod 16384, as Redis's `keyHashSlot` computes it.
//!
//! Herald's channel names cannot hold braces (`channel::validate`), so a Redis channel
//! `prefix + name` has a hash tag only when the prefix gives it one.

/// How many slots a Redis Cluster has.
pub const SLOTS: u16 = 16384;

/// The slot `name` hashes to.
pub fn slot(name: impl AsRef<[u8]>) -> u16 {
    let name = name.as_ref();
    crc16::State::<crc16::XMODEM>::calculate(hash_tag(name).unwrap_or(name)) % SLOTS
}

/// What lies between the first `{` and the first `}` after it, when that is not empty
/// (`{}` or an unclosed `{` hash the whole name: Redis does the same).
fn hash_tag(name: &[u8]) -> Option<&[u8]> {
    let open = name.iter().position(|&b| b == b'{')?;
    let len = name[open + 1..].iter().position(|&b| b == b'}')?;
    (len > 0).then(|| &name[open + 1..open + 1 + len])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_slots_from_the_redis_cluster_spec_and_redis_cli() {
        // `CLUSTER KEYSLOT foo` = 12182, `bar` = 5061 on Redis 7.0.15.
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("bar"), 5061);
        assert_eq!(slot(""), 0);
    }

    #[test]
    fn a_hash_tag_decides_the_slot() {
        assert_eq!(slot("{user1000}.following"), slot("{user1000}.followers"));
        assert_eq!(slot("{user1000}.following"), slot("user1000"));
        // Only the first `{...}` counts, and only if it holds something.
        assert_eq!(slot("foo{bar}{zap}"), slot("bar"));
        assert_eq!(slot("foo{}{bar}"), slot("foo{}{bar}".as_bytes()));
        assert_ne!(slot("foo{}{bar}"), slot("bar"));
        assert_eq!(slot("foo{{bar}}zap"), slot("{bar"));
        assert_eq!(slot("foo{bar"), crc_whole("foo{bar"));
    }

    fn crc_whole(name: &str) -> u16 {
        crc16::State::<crc16::XMODEM>::calculate(name.as_bytes()) % SLOTS
    }
}
