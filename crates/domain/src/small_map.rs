//! [`SmallMap`]: an ordered map kept as one sorted, tightly sized vector.
//!
//! A customer's view holds a handful of small maps (subscriptions, unpaid invoices, holds,
//! metadata) that usually have zero to three entries, and a server keeps one view per
//! customer in memory. `BTreeMap` allocates a node of eleven slots for its first entry, so a
//! view of one subscription cost about 2 KB; here one entry costs one entry. Lookups are a
//! binary search, inserts shift a few elements: right for maps this small, wrong for large
//! ones. It serializes exactly as a `BTreeMap` does (a JSON object in key order), so saved
//! views keep their shape.

use std::borrow::Borrow;
use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An ordered map for a few entries. See the module documentation.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SmallMap<K, V> {
    entries: Vec<(K, V)>,
}

impl<K, V> Default for SmallMap<K, V> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
        }
    }
}

impl<K: Ord, V> SmallMap<K, V> {
    pub const fn new() -> Self {
        Self {
            entries: Vec::new(),
        }
    }

    fn find<Q>(&self, key: &Q) -> Result<usize, usize>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.entries.binary_search_by(|(k, _)| k.borrow().cmp(key))
    }

    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.find(key).ok().map(|i| &self.entries[i].1)
    }

    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        match self.find(key) {
            Ok(i) => Some(&mut self.entries[i].1),
            Err(_) => None,
        }
    }

    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.find(key).is_ok()
    }

    /// Inserts or replaces; the value replaced, if any.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self.find(&key) {
            Ok(i) => Some(std::mem::replace(&mut self.entries[i].1, value)),
            Err(i) => {
                self.entries.reserve_exact(1);
                self.entries.insert(i, (key, value));
                None
            }
        }
    }

    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        let i = self.find(key).ok()?;
        let (_, value) = self.entries.remove(i);
        self.entries.shrink_to_fit();
        Some(value)
    }

    /// The value at `key`, inserted by `make` first when absent.
    pub fn get_or_insert_with(&mut self, key: K, make: impl FnOnce() -> V) -> &mut V {
        let i = match self.find(&key) {
            Ok(i) => i,
            Err(i) => {
                self.entries.reserve_exact(1);
                self.entries.insert(i, (key, make()));
                i
            }
        };
        &mut self.entries[i].1
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&K, &mut V) -> bool) {
        self.entries.retain_mut(|(k, v)| keep(k, v));
        self.entries.shrink_to_fit();
    }
}

impl<K, V> SmallMap<K, V> {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries in key order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&K, &V)> + ExactSizeIterator {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &K> + ExactSizeIterator {
        self.entries.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl DoubleEndedIterator<Item = &V> + ExactSizeIterator {
        self.entries.iter().map(|(_, v)| v)
    }

    pub fn values_mut(&mut self) -> impl DoubleEndedIterator<Item = &mut V> + ExactSizeIterator {
        self.entries.iter_mut().map(|(_, v)| v)
    }
}

impl<K: Ord, V> FromIterator<(K, V)> for SmallMap<K, V> {
    /// Later entries win over earlier ones with the same key, as in `BTreeMap`.
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut entries: Vec<(K, V)> = iter.into_iter().collect();
        // A stable sort keeps equal keys in arrival order; keep the last of each.
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let mut deduped: Vec<(K, V)> = Vec::with_capacity(entries.len());
        for entry in entries {
            match deduped.last_mut() {
                Some(last) if last.0 == entry.0 => *last = entry,
                _ => deduped.push(entry),
            }
        }
        deduped.shrink_to_fit();
        Self { entries: deduped }
    }
}

impl<K: Ord, V> From<std::collections::BTreeMap<K, V>> for SmallMap<K, V> {
    fn from(map: std::collections::BTreeMap<K, V>) -> Self {
        let mut entries: Vec<(K, V)> = map.into_iter().collect();
        entries.shrink_to_fit();
        Self { entries }
    }
}

impl<'a, K, V> IntoIterator for &'a SmallMap<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = std::iter::Map<std::slice::Iter<'a, (K, V)>, fn(&'a (K, V)) -> (&'a K, &'a V)>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter().map(|(k, v)| (k, v))
    }
}

impl<K, V> IntoIterator for SmallMap<K, V> {
    type Item = (K, V);
    type IntoIter = std::vec::IntoIter<(K, V)>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

impl<K: fmt::Debug, V: fmt::Debug> fmt::Debug for SmallMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<K: Serialize, V: Serialize> Serialize for SmallMap<K, V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de, K, V> Deserialize<'de> for SmallMap<K, V>
where
    K: Deserialize<'de> + Ord,
    V: Deserialize<'de>,
{
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MapVisitor<K, V>(std::marker::PhantomData<(K, V)>);

        impl<'de, K, V> Visitor<'de> for MapVisitor<K, V>
        where
            K: Deserialize<'de> + Ord,
            V: Deserialize<'de>,
        {
            type Value = SmallMap<K, V>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::with_capacity(access.size_hint().unwrap_or(0).min(64));
                while let Some(entry) = access.next_entry()? {
                    entries.push(entry);
                }
                Ok(entries.into_iter().collect())
            }
        }

        deserializer.deserialize_map(MapVisitor(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// The same operations on a `SmallMap` and a `BTreeMap` leave the same entries in the same
    /// order, and both serialize to the same JSON.
    #[test]
    fn behaves_and_serializes_as_a_btreemap() {
        let mut small = SmallMap::new();
        let mut big = BTreeMap::new();
        let keys = ["m", "c", "x", "a", "c", "q", "m", "b"];
        for (n, key) in keys.iter().enumerate() {
            assert_eq!(
                small.insert(key.to_string(), n),
                big.insert(key.to_string(), n)
            );
        }
        assert_eq!(small.remove("x"), big.remove("x"));
        assert_eq!(small.remove("nope"), big.remove("nope"));
        *small.get_or_insert_with("z".into(), || 0) += 5;
        *big.entry("z".to_string()).or_insert(0) += 5;
        *small.get_or_insert_with("a".into(), || 0) += 5;
        *big.entry("a".to_string()).or_insert(0) += 5;
        small.retain(|k, _| k != "b");
        big.retain(|k, _| k != "b");
        assert_eq!(
            small.iter().collect::<Vec<_>>(),
            big.iter().collect::<Vec<_>>()
        );
        assert_eq!(small.len(), big.len());
        assert_eq!(small.get("q"), big.get("q"));
        assert!(!small.contains_key("b"));
        let json = serde_json::to_string(&small).unwrap();
        assert_eq!(json, serde_json::to_string(&big).unwrap());
        let back: SmallMap<String, usize> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, small);
    }

    /// A JSON object with its keys out of order (as another writer may produce) still reads
    /// into key order, and a repeated key keeps its last value, as `BTreeMap` would.
    #[test]
    fn reads_unordered_and_repeated_keys_like_a_btreemap() {
        let text = r#"{"b": 1, "a": 2, "b": 3}"#;
        let small: SmallMap<String, u32> = serde_json::from_str(text).unwrap();
        let big: BTreeMap<String, u32> = serde_json::from_str(text).unwrap();
        assert_eq!(
            small.iter().collect::<Vec<_>>(),
            big.iter().collect::<Vec<_>>()
        );
    }

    /// One entry costs one entry's room, not a node's.
    #[test]
    fn keeps_no_spare_room() {
        let mut small = SmallMap::new();
        small.insert(1u32, [0u8; 100]);
        assert_eq!(small.entries.capacity(), 1);
        small.insert(2, [0; 100]);
        small.remove(&1);
        assert_eq!(small.entries.capacity(), 1);
    }
}
