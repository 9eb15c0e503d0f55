//! Key codecs. Integers are big-endian so that RocksDB's byte order is numeric order, and every
//! key starts with the group id so a group's data is one contiguous range.

/// Length of a `(group, u64)` key.
pub const GROUP_U64_KEY_LEN: usize = 16;

/// `group ‖ n`, both big-endian.
pub fn group_u64(group: u64, n: u64) -> [u8; GROUP_U64_KEY_LEN] {
    let mut k = [0u8; GROUP_U64_KEY_LEN];
    k[..8].copy_from_slice(&group.to_be_bytes());
    k[8..].copy_from_slice(&n.to_be_bytes());
    k
}

/// `group ‖ tag`: one small fixed slot of a group (its vote, its applied state, ...).
pub fn group_tag(group: u64, tag: u8) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[..8].copy_from_slice(&group.to_be_bytes());
    k[8] = tag;
    k
}

/// `group ‖ i` for a signed id, order-preserving (the sign bit flipped).
pub fn group_i64(group: u64, n: i64) -> [u8; GROUP_U64_KEY_LEN] {
    group_u64(group, (n as u64) ^ (1 << 63))
}

/// Decodes the `n` of a `group ‖ n` key; `None` if the key has another shape.
pub fn decode_group_u64(key: &[u8]) -> Option<(u64, u64)> {
    if key.len() != GROUP_U64_KEY_LEN {
        return None;
    }
    let g = u64::from_be_bytes(key[..8].try_into().ok()?);
    let n = u64::from_be_bytes(key[8..].try_into().ok()?);
    Some((g, n))
}

/// Decodes the `n` of a `group ‖ i` key written by [`group_i64`].
pub fn decode_group_i64(key: &[u8]) -> Option<(u64, i64)> {
    decode_group_u64(key).map(|(g, n)| (g, (n ^ (1 << 63)) as i64))
}

/// `group ‖ bytes`: a variable-length key inside a group's range (a record key, a prefix).
pub fn group_bytes(group: u64, bytes: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + bytes.len());
    k.extend_from_slice(&group.to_be_bytes());
    k.extend_from_slice(bytes);
    k
}

/// The first key after every key that starts with `prefix` (exclusive end of a prefix scan);
/// `None` when no such key exists (the prefix is all `0xff`).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// The first key of a group's range.
pub fn group_start(group: u64) -> [u8; 8] {
    group.to_be_bytes()
}

/// The first key after a group's range (exclusive end). `None` for the last possible group.
pub fn group_end(group: u64) -> Option<[u8; 8]> {
    group.checked_add(1).map(u64::to_be_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_bounds_exactly_the_keys_with_the_prefix() {
        let p = group_bytes(7, b"o/g1/");
        let end = prefix_end(&p).expect("not all 0xff");
        assert!(group_bytes(7, b"o/g1/t/0").as_slice() < end.as_slice());
        assert!(group_bytes(7, b"o/g1/\xff\xff").as_slice() < end.as_slice());
        assert!(group_bytes(7, b"o/g10").as_slice() >= end.as_slice());
        assert!(group_bytes(7, b"o/g1") < p);
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
    }

    #[test]
    fn u64_keys_sort_numerically_within_and_across_groups() {
        let pairs = [
            (0, 0),
            (0, 1),
            (0, 255),
            (0, 256),
            (0, u64::MAX),
            (1, 0),
            (2, 7),
        ];
        let keys: Vec<_> = pairs.iter().map(|&(g, n)| group_u64(g, n)).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        for (k, p) in keys.iter().zip(pairs) {
            assert_eq!(decode_group_u64(k), Some(p));
        }
    }

    #[test]
    fn i64_keys_sort_numerically_and_round_trip() {
        let ids = [i64::MIN, -5, -1, 0, 1, 42, i64::MAX];
        let keys: Vec<_> = ids.iter().map(|&i| group_i64(3, i)).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        for (k, i) in keys.iter().zip(ids) {
            assert_eq!(decode_group_i64(k), Some((3, i)));
        }
    }

    #[test]
    fn group_ranges_bound_their_keys() {
        let k = group_u64(5, u64::MAX);
        assert!(k.as_slice() >= group_start(5).as_slice());
        assert!(k.as_slice() < group_end(5).expect("not last").as_slice());
        assert!(group_tag(5, 9).as_slice() < group_end(5).expect("not last").as_slice());
        assert_eq!(group_end(u64::MAX), None);
        assert_eq!(decode_group_u64(&[1, 2, 3]), None);
    }
}
