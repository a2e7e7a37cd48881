//! The register's keys and values in little memory: each key and its value in one allocation, in a B-tree ordered by key.
//!
//! A warm standby holds the whole register. As a `BTreeMap<String,
//! Vec<u8>>` a 10-byte key with a 100-byte value costs about 240 bytes of
//! resident memory (two allocations, two 24-byte headers, half-full
//! leaves); one allocation and a 16-byte entry, in leaves built full from
//! a sorted read, cost about 150.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::BTreeSet;

/// One key and its value in one allocation: the key's length (LEB128),
/// the key, the value. Compared by key only, as a set of entries looks
/// them up.
#[derive(Debug, Clone)]
struct Entry {
    bytes: Box<[u8]>,
}

impl Entry {
    fn new(key: &str, value: &[u8]) -> Self {
        // Exactly: a boxed slice made of a larger vector is reallocated.
        let length_bytes = (usize::BITS - key.len().leading_zeros()).div_ceil(7).max(1) as usize;
        let mut bytes = Vec::with_capacity(length_bytes + key.len() + value.len());
        let mut length = key.len();
        loop {
            let low = (length & 0x7f) as u8;
            length >>= 7;
            if length == 0 {
                bytes.push(low);
                break;
            }
            bytes.push(low | 0x80);
        }
        bytes.extend_from_slice(key.as_bytes());
        bytes.extend_from_slice(value);
        Self {
            bytes: bytes.into_boxed_slice(),
        }
    }

    /// Where the key starts, and where it ends.
    fn key_range(&self) -> (usize, usize) {
        let (mut length, mut shift, mut at) = (0usize, 0, 0);
        loop {
            let byte = self.bytes[at];
            length |= usize::from(byte & 0x7f) << shift;
            at += 1;
            if byte & 0x80 == 0 {
                return (at, at + length);
            }
            shift += 7;
        }
    }

    fn key(&self) -> &[u8] {
        let (start, end) = self.key_range();
        &self.bytes[start..end]
    }

    fn value(&self) -> &[u8] {
        &self.bytes[self.key_range().1..]
    }

    /// The bytes it counts for against `kv.maxBytes`: key and value.
    fn size(&self) -> u64 {
        (self.bytes.len() - self.key_range().0) as u64
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Entry {}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(other.key())
    }
}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Looked up by its key's bytes, which order entries as `String` orders keys.
impl Borrow<[u8]> for Entry {
    fn borrow(&self) -> &[u8] {
        self.key()
    }
}

/// Keys and their values, ordered by key, with the bytes they hold.
#[derive(Debug, Clone, Default)]
pub struct Entries {
    set: BTreeSet<Entry>,
    /// Key and value bytes of every entry.
    bytes: u64,
}

impl Entries {
    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.set.get(key.as_bytes()).map(Entry::value)
    }

    /// Sets `key` to `value`.
    pub fn insert(&mut self, key: &str, value: &[u8]) {
        let entry = Entry::new(key, value);
        self.bytes += entry.size();
        if let Some(old) = self.set.replace(entry) {
            self.bytes -= old.size();
        }
    }

    /// Removes `key`, if it is there.
    pub fn remove(&mut self, key: &str) {
        if let Some(old) = self.set.take(key.as_bytes()) {
            self.bytes -= old.size();
        }
    }

    /// How many keys.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// Whether there is no key.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// Key and value bytes of every entry.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Every key and its value, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.set.iter().map(|entry| {
            let key = std::str::from_utf8(entry.key())
                .unwrap_or_else(|_| unreachable!("keys are stored from strings"));
            (key, entry.value())
        })
    }
}

/// Equal when every key holds the same value.
impl PartialEq for Entries {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Entries {}

/// Built in one pass when the pairs come in key order (a snapshot's do):
/// full leaves, where inserting one by one leaves them half full.
impl<K: AsRef<str>, V: AsRef<[u8]>> FromIterator<(K, V)> for Entries {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(pairs: I) -> Self {
        let set: BTreeSet<Entry> = pairs
            .into_iter()
            .map(|(key, value)| Entry::new(key.as_ref(), value.as_ref()))
            .collect();
        let bytes = set.iter().map(Entry::size).sum();
        Self { set, bytes }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn pairs(entries: &Entries) -> Vec<(String, Vec<u8>)> {
        entries
            .iter()
            .map(|(key, value)| (key.to_owned(), value.to_vec()))
            .collect()
    }

    #[test]
    fn entries_follow_a_map_of_strings_in_order_and_bytes() {
        let mut map = BTreeMap::new();
        let mut entries = Entries::default();
        let steps: &[(&str, Option<&[u8]>)] = &[
            ("b", Some(b"22")),
            ("a", Some(b"")),
            ("ab", Some(b"x")),
            ("b", Some(b"1")),
            ("zz", None),
            ("a", None),
            ("é/1", Some(b"v")),
        ];
        for (key, value) in steps {
            match value {
                Some(value) => {
                    map.insert(key.to_string(), value.to_vec());
                    entries.insert(key, value);
                }
                None => {
                    map.remove(*key);
                    entries.remove(key);
                }
            }
            let expected: Vec<_> = map.clone().into_iter().collect();
            assert_eq!(pairs(&entries), expected);
            let bytes: usize = map.iter().map(|(k, v)| k.len() + v.len()).sum();
            assert_eq!(entries.bytes(), bytes as u64);
            assert_eq!(entries.len(), map.len());
        }
        assert_eq!(entries.get("b"), Some(&b"1"[..]));
        assert_eq!(entries.get("a"), None);
        assert_eq!(entries.get("ab"), Some(&b"x"[..]));
    }

    #[test]
    fn a_key_is_not_confused_with_a_longer_key_or_its_value() {
        let entries: Entries = [("k", "1"), ("k1", "")].into_iter().collect();
        assert_eq!(entries.get("k"), Some(&b"1"[..]));
        assert_eq!(entries.get("k1"), Some(&b""[..]));
        assert_eq!(entries.get("k11"), None);
        assert_eq!(entries.bytes(), 4);
    }

    #[test]
    fn keys_of_every_length_class_keep_their_bytes_apart_from_the_value() {
        for length in [0, 1, 127, 128, 300, 16_383, 16_384, 70_000] {
            let key = "k".repeat(length);
            let entry = Entry::new(&key, b"value");
            assert_eq!(entry.key(), key.as_bytes(), "{length}");
            assert_eq!(entry.value(), b"value", "{length}");
            assert_eq!(entry.size(), length as u64 + 5, "{length}");
            let length_bytes = entry.bytes.len() - length - 5;
            assert_eq!(
                length_bytes,
                if length < 128 {
                    1
                } else if length < 16_384 {
                    2
                } else {
                    3
                }
            );
        }
    }

    #[test]
    fn entries_are_equal_when_every_key_holds_the_same_value() {
        let a: Entries = [("k", "1"), ("l", "2")].into_iter().collect();
        let mut b = a.clone();
        assert_eq!(a, b);
        b.insert("l", b"3");
        assert_ne!(a, b);
        b.insert("l", b"2");
        assert_eq!(a, b);
        b.remove("k");
        assert_ne!(a, b);
    }

    proptest::proptest! {
        /// Built at once or one by one, the entries are the map's.
        #[test]
        fn built_at_once_or_by_inserts_the_entries_are_the_maps(
            map in proptest::collection::btree_map(".{0,8}", proptest::collection::vec(0u8..255, 0..8), 0..40)
        ) {
            let at_once: Entries = map.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
            let mut by_inserts = Entries::default();
            for (key, value) in &map {
                by_inserts.insert(key, value);
            }
            let expected: Vec<_> = map.clone().into_iter().collect();
            proptest::prop_assert_eq!(pairs(&at_once), expected.clone());
            proptest::prop_assert_eq!(pairs(&by_inserts), expected);
            proptest::prop_assert_eq!(at_once.bytes(), by_inserts.bytes());
        }
    }
}
