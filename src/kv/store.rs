//! The in-memory store: a concurrent map from key bytes to (value, version),
//! with memory accounting. Each item is one heap block ([`Item`]).
//!
//! The map is split into many shards, each behind its own reader-writer lock,
//! so that GETs of different keys never touch the same lock and GETs of the
//! same hot key only share a read lock. `bench/results/` records why this won
//! over a lock-free map under Zipf-0.99 hot keys (`cargo bench --bench store_zipf`).
//!
//! Keys come from the network, so they are hashed with SipHash-1-3 under a
//! random per-process key (std's `RandomState`), as Redis does: with a fixed,
//! public seed a client could send keys that all land in one bucket and turn
//! every lookup into a linear scan. Each operation hashes its key once; the
//! middle bits pick the shard and the whole hash goes to that shard's
//! `hashbrown::HashTable`, which uses the low bits and the top seven.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use crossbeam_utils::CachePadded;
use hashbrown::HashTable;
use hashbrown::hash_table::Entry as Slot;
use triomphe::{Arc, ThinArc};

/// Bytes charged per entry on top of its key and value, so that
/// `--max-memory` bounds what the process really holds. Measured with
/// `bench/item-memory.sh` (16-byte keys, 100-byte values, a million items):
/// the item's block (its reference count, version, key length and slice
/// length, then key and value) with the allocator's header and rounding,
/// and the 8-byte table slot at the load factor hashbrown runs at (between
/// 7/16 and 7/8 full). Set above that measurement, since the allocator's
/// rounding varies with the size: see `bench/results/` for how close it is
/// at 10, 100 and 1,000-byte values. An estimate, documented as such.
pub const ENTRY_OVERHEAD: u64 = 72;

/// Why a write was refused. Nothing stored is changed when one is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The caller's expected version did not match; `current` is 0 when absent.
    #[error("version mismatch: current version is {current}")]
    VersionMismatch {
        /// The key's version now.
        current: u64,
    },
    /// The write would take the store past its memory limit.
    #[error("store is full: {used} of {limit} bytes used, this write needs {needed} more")]
    OutOfMemory {
        /// Bytes held before this write.
        used: u64,
        /// `--max-memory`.
        limit: u64,
        /// Extra bytes the write would have needed.
        needed: u64,
    },
}

/// An item's fixed part, at the front of its block.
struct Meta {
    /// Unique across the store and increasing with every write to the key,
    /// so a delete-then-recreate never reuses a version a client may still
    /// hold. Each shard numbers its own writes under its lock, with the
    /// shard's index in the low bits, so writers share no counter.
    version: u64,
    key_len: usize,
}

/// One stored item: a single reference-counted heap block holding its
/// version, then its key and value, reached through an 8-byte pointer.
///
/// Why this shape: memory per item is what a cache is judged on. A `Bytes`
/// for the data made a 48-byte table slot (handle, key length, version) and
/// a separate 32-byte reference-count block; a thin pointer (triomphe's
/// `ThinArc`, which keeps the slice length in the block) makes the slot 8
/// bytes and the count part of the block. A reader clones the pointer (one
/// atomic increment, as a `Bytes` clone was) and the reply is encoded from
/// the block, so a GET copies the value once, into the reply, and
/// allocates nothing. (A MULTI_GET wraps each item found in a `Bytes`, one
/// small allocation per key.)
#[derive(Clone)]
pub struct Item(ThinArc<Meta, u8>);

impl Item {
    /// Copies `key` and `value` into one new block (a 32-byte header, then
    /// exactly their bytes); the version is set when the write is numbered,
    /// under the shard's lock.
    fn new(key: &[u8], value: &[u8]) -> Self {
        let meta = Meta {
            version: 0,
            key_len: key.len(),
        };
        let len = key.len() + value.len();
        // Zeroed, then copied into: triomphe's safe constructors take one
        // slice or an iterator, and key and value are two slices; this way
        // they go in with two `copy_from_slice` (memcpy), not byte by byte.
        // Skipping the zero fill would need `unsafe`.
        let mut block = ThinArc::from_header_and_iter(meta, std::iter::repeat_n(0, len));
        let filled = block.with_arc_mut(|arc| {
            Arc::get_mut(arc).map(|b| {
                let (k, v) = b.slice_mut().split_at_mut(key.len());
                k.copy_from_slice(key);
                v.copy_from_slice(value);
            })
        });
        debug_assert!(filled.is_some(), "a block just made is not shared");
        Item(block)
    }

    /// Numbers the write; called before the item is shared, so it always
    /// has the block to itself.
    fn set_version(&mut self, version: u64) {
        let set = self
            .0
            .with_arc_mut(|arc| Arc::get_mut(arc).map(|b| b.header_mut().version = version));
        debug_assert!(set.is_some(), "an item is numbered before it is shared");
    }

    fn key(&self) -> &[u8] {
        &self.0.slice[..self.0.header.header.key_len]
    }

    /// The stored value, shared with the store (not a copy).
    pub fn value(&self) -> &[u8] {
        &self.0.slice[self.0.header.header.key_len..]
    }

    /// The version this write of the value was given.
    pub fn version(&self) -> u64 {
        self.0.header.header.version
    }

    fn value_len(&self) -> usize {
        self.0.slice.len() - self.0.header.header.key_len
    }
}

/// The value (not the key): what a `Bytes` made from an item holds.
impl AsRef<[u8]> for Item {
    fn as_ref(&self) -> &[u8] {
        self.value()
    }
}

impl std::fmt::Debug for Item {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Item")
            .field("value_len", &self.value_len())
            .field("version", &self.version())
            .finish()
    }
}

/// One shard: items found by their key's precomputed hash, and the count of
/// writes it has numbered.
#[derive(Default)]
struct Shard {
    table: HashTable<Item>,
    writes: u64,
}

/// The concurrent key-value map shared by every worker.
pub struct Store {
    shards: Box<[CachePadded<RwLock<Shard>>]>,
    hasher: RandomState,
    /// Estimated bytes held, compared against `limit` before every growth.
    used: AtomicU64,
    limit: u64,
    entries: AtomicUsize,
}

fn cost(key_len: usize, value_len: usize) -> u64 {
    key_len as u64 + value_len as u64 + ENTRY_OVERHEAD
}

impl Store {
    /// A store that refuses writes once its estimated size would pass `limit` bytes.
    pub fn new(limit: u64) -> Self {
        Self::with_shards(limit, 256)
    }

    /// Like [`Store::new`] with an explicit shard count (rounded up to a power of two).
    pub fn with_shards(limit: u64, shards: usize) -> Self {
        let n = shards.max(1).next_power_of_two();
        Store {
            shards: (0..n)
                .map(|_| CachePadded::new(RwLock::new(Shard::default())))
                .collect(),
            hasher: RandomState::new(),
            used: AtomicU64::new(0),
            limit,
            entries: AtomicUsize::new(0),
        }
    }

    fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    fn shard_index(&self, hash: u64) -> usize {
        // Bits 32 and up: the table uses the low bits for the bucket and the
        // top seven as a tag, so shard choice must not fix either.
        (hash >> 32) as usize & (self.shards.len() - 1)
    }

    fn read(&self, hash: u64) -> RwLockReadGuard<'_, Shard> {
        // A poisoned lock only means a panic elsewhere; the map itself is
        // never left half-updated by this module, so keep serving.
        let shard = &self.shards[self.shard_index(hash)];
        shard.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self, hash: u64) -> RwLockWriteGuard<'_, Shard> {
        let shard = &self.shards[self.shard_index(hash)];
        shard.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The current value and version of `key`, shared, not copied.
    pub fn get(&self, key: &[u8]) -> Option<Item> {
        let hash = self.hash(key);
        self.read(hash)
            .table
            .find(hash, |item| item.key() == key)
            .cloned()
    }

    /// Stores `value` under `key` and returns the new version. With
    /// `expected = Some(v)` this is a compare-and-set: it succeeds only if the
    /// current version is `v` (0 meaning absent).
    pub fn put(&self, key: &[u8], value: &[u8], expected: Option<u64>) -> Result<u64, StoreError> {
        // Copy outside the lock. The copy also detaches the value from the
        // connection's read buffer, which it would otherwise keep alive.
        let mut item = Item::new(key, value);
        let hash = self.hash(key);
        let mut guard = self.write(hash);
        let shard = &mut *guard;
        let slot = shard
            .table
            .entry(hash, |i| i.key() == key, |i| self.hash(i.key()));
        let current = match &slot {
            Slot::Occupied(o) => Some((o.get().version(), o.get().value_len())),
            Slot::Vacant(_) => None,
        };
        if let Some(want) = expected {
            let have = current.map_or(0, |(v, _)| v);
            if want != have {
                return Err(StoreError::VersionMismatch { current: have });
            }
        }
        let new_cost = cost(key.len(), value.len());
        let old_cost = current.map_or(0, |(_, len)| cost(key.len(), len));
        if new_cost > old_cost {
            self.reserve(new_cost - old_cost)?;
        } else if new_cost < old_cost {
            self.used.fetch_sub(old_cost - new_cost, Ordering::Relaxed);
        }
        // This shard's write count, above its index: unique store-wide, and
        // increasing per key, with no counter shared between shards.
        shard.writes += 1;
        let version =
            (shard.writes << self.shards.len().trailing_zeros()) | self.shard_index(hash) as u64;
        item.set_version(version);
        match slot {
            Slot::Occupied(mut o) => *o.get_mut() = item,
            Slot::Vacant(v) => {
                v.insert(item);
                self.entries.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(version)
    }

    fn reserve(&self, bytes: u64) -> Result<(), StoreError> {
        let before = self.used.fetch_add(bytes, Ordering::Relaxed);
        if before.saturating_add(bytes) > self.limit {
            self.used.fetch_sub(bytes, Ordering::Relaxed);
            return Err(StoreError::OutOfMemory {
                used: before,
                limit: self.limit,
                needed: bytes,
            });
        }
        Ok(())
    }

    /// Removes `key`, returning the version it had, or `None` if it was absent.
    /// With `expected = Some(v)`, removes it only if its version is `v`.
    pub fn delete(&self, key: &[u8], expected: Option<u64>) -> Result<Option<u64>, StoreError> {
        let hash = self.hash(key);
        let mut shard = self.write(hash);
        let found = shard.table.find_entry(hash, |i| i.key() == key).ok();
        let have = found.as_ref().map_or(0, |o| o.get().version());
        if let Some(want) = expected
            && want != have
        {
            return Err(StoreError::VersionMismatch { current: have });
        }
        Ok(found.map(|o| {
            let (item, _) = o.remove();
            self.used
                .fetch_sub(cost(key.len(), item.value_len()), Ordering::Relaxed);
            self.entries.fetch_sub(1, Ordering::Relaxed);
            item.version()
        }))
    }

    /// Number of keys stored.
    pub fn len(&self) -> usize {
        self.entries.load(Ordering::Relaxed)
    }

    /// True when no key is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Estimated bytes held (keys, values and [`ENTRY_OVERHEAD`] per entry).
    pub fn memory_used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// The configured memory limit in bytes.
    pub fn memory_limit(&self) -> u64 {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_increase_and_cas_checks_them() {
        let s = Store::new(1 << 20);
        assert!(s.get(b"k").is_none());
        let v1 = s.put(b"k", b"a", Some(0)).unwrap();
        assert_eq!(
            s.put(b"k", b"b", Some(0)),
            Err(StoreError::VersionMismatch { current: v1 })
        );
        let v2 = s.put(b"k", b"b", Some(v1)).unwrap();
        assert!(v2 > v1);
        assert_eq!(s.get(b"k").unwrap().value(), b"b");
        assert_eq!(
            s.delete(b"k", Some(v1)),
            Err(StoreError::VersionMismatch { current: v2 })
        );
        assert_eq!(s.delete(b"k", None), Ok(Some(v2)));
        assert_eq!(s.delete(b"k", None), Ok(None));
        let v3 = s.put(b"k", b"c", None).unwrap();
        assert!(v3 > v2, "a recreated key never reuses a version");
    }

    #[test]
    fn the_key_hash_is_keyed_per_store() {
        // A fixed hash would let a client precompute keys that collide.
        let (a, b) = (Store::new(1 << 20), Store::new(1 << 20));
        assert_ne!(a.hash(b"key:00000001"), b.hash(b"key:00000001"));
    }

    #[test]
    fn many_keys_survive_table_growth_in_every_shard() {
        let s = Store::with_shards(1 << 30, 4);
        for i in 0..20_000u32 {
            s.put(&i.to_le_bytes(), &i.to_be_bytes(), None).unwrap();
        }
        for i in (0..20_000u32).step_by(2) {
            assert!(s.delete(&i.to_le_bytes(), None).unwrap().is_some());
        }
        assert_eq!(s.len(), 10_000);
        for i in 0..20_000u32 {
            let got = s.get(&i.to_le_bytes()).map(|e| e.value().to_vec());
            let want = (i % 2 == 1).then(|| i.to_be_bytes().to_vec());
            assert_eq!(got, want, "key {i}");
        }
    }

    #[test]
    fn versions_are_unique_store_wide_and_increase_per_key() {
        let s = Store::with_shards(1 << 30, 8);
        let mut seen = std::collections::HashSet::new();
        for round in 0..3u32 {
            for i in 0..2_000u32 {
                let key = i.to_le_bytes();
                let before = s.get(&key).map_or(0, |e| e.version());
                if round == 1 && i % 2 == 0 {
                    s.delete(&key, None).unwrap();
                }
                let v = s.put(&key, b"v", None).unwrap();
                assert!(v > before, "key {i}: {v} after {before}");
                assert!(seen.insert(v), "version {v} issued twice");
            }
        }
    }

    #[test]
    fn memory_limit_refuses_growth_but_keeps_what_is_stored() {
        let limit = 2 * cost(1, 100);
        let s = Store::new(limit);
        s.put(b"a", &[1; 100], None).unwrap();
        s.put(b"b", &[2; 100], None).unwrap();
        assert_eq!(s.memory_used(), limit);
        assert!(matches!(
            s.put(b"c", &[3; 100], None),
            Err(StoreError::OutOfMemory { .. })
        ));
        assert!(matches!(
            s.put(b"a", &[1; 101], None),
            Err(StoreError::OutOfMemory { .. })
        ));
        // Shrinking an entry frees room that another write can use.
        s.put(b"a", &[1; 50], None).unwrap();
        assert!(matches!(
            s.put(b"c", &[3; 10], None),
            Err(StoreError::OutOfMemory { .. })
        ));
        s.put(b"b", &[2; 150], None).unwrap();
        assert_eq!(s.memory_used(), limit);
        assert_eq!(s.get(b"a").unwrap().value().len(), 50);
        // Deleting frees all of it.
        s.delete(b"a", None).unwrap();
        s.delete(b"b", None).unwrap();
        assert_eq!(s.memory_used(), 0);
        assert!(s.is_empty());
    }
}
