//! The in-memory store: a concurrent map from key bytes to (value, version),
//! with memory accounting.
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

use bytes::Bytes;
use crossbeam_utils::CachePadded;
use hashbrown::HashTable;
use hashbrown::hash_table::Entry as Slot;

/// Bytes charged per entry on top of its key and value, so that
/// `--max-memory` bounds what the process really holds. Measured with
/// `bench/item-memory.sh` (16-byte keys, 100-byte values: 264 bytes of
/// resident memory per item): the item's heap block with the allocator's
/// header and rounding, the block's reference count (made at the write), and
/// the 48-byte table slot at the load factor hashbrown runs at (between 7/16
/// and 7/8 full). Set 8 bytes above that measurement, since the allocator's
/// rounding varies with the size: within 5% at 10, 100 and 1,000-byte
/// values. An estimate, documented as such.
pub const ENTRY_OVERHEAD: u64 = 156;

/// A stored value and the version that identifies this write of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The value bytes, shared (not copied) with every reader.
    pub value: Bytes,
    /// Unique across the store and increasing with every write to the key,
    /// so a delete-then-recreate never reuses a version a client may still
    /// hold. Each shard numbers its own writes under its lock, with the
    /// shard's index in the low bits, so writers share no counter.
    pub version: u64,
}

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

/// One stored item: its key and value in one heap block (`data`, key
/// first), and its version. One block per item rather than one each for key
/// and value, and a 48-byte table slot rather than 72 (a key handle and a
/// value handle); readers get the value as a slice of the block, without a
/// copy or an allocation.
struct Item {
    data: Bytes,
    key_len: usize,
    version: u64,
}

impl Item {
    /// Copies `key` and `value` into one block of exactly their size; the
    /// version is set when the write is numbered, under the shard's lock.
    fn new(key: &[u8], value: &[u8]) -> Self {
        let mut data = Vec::with_capacity(key.len() + value.len());
        data.extend_from_slice(key);
        data.extend_from_slice(value);
        let data = Bytes::from(data);
        // A block made from a `Vec` gets its reference count (a small heap
        // header) when first shared. Share it now, on the write, which
        // allocates anyway: the first GET of an item then allocates nothing,
        // and an item costs the same memory whether it has been read or not.
        drop(data.clone());
        Item {
            data,
            key_len: key.len(),
            version: 0,
        }
    }

    fn key(&self) -> &[u8] {
        &self.data[..self.key_len]
    }

    fn value_len(&self) -> usize {
        self.data.len() - self.key_len
    }

    fn entry(&self) -> Entry {
        Entry {
            value: self.data.slice(self.key_len..),
            version: self.version,
        }
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

    /// The current value and version of `key`.
    pub fn get(&self, key: &[u8]) -> Option<Entry> {
        let hash = self.hash(key);
        self.read(hash)
            .table
            .find(hash, |item| item.key() == key)
            .map(Item::entry)
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
            Slot::Occupied(o) => Some((o.get().version, o.get().value_len())),
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
        item.version = version;
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
        let have = found.as_ref().map_or(0, |o| o.get().version);
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
            item.version
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
        assert_eq!(s.get(b"k"), None);
        let v1 = s.put(b"k", b"a", Some(0)).unwrap();
        assert_eq!(
            s.put(b"k", b"b", Some(0)),
            Err(StoreError::VersionMismatch { current: v1 })
        );
        let v2 = s.put(b"k", b"b", Some(v1)).unwrap();
        assert!(v2 > v1);
        assert_eq!(s.get(b"k").unwrap().value, Bytes::from_static(b"b"));
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
            let got = s.get(&i.to_le_bytes()).map(|e| e.value);
            let want = (i % 2 == 1).then(|| Bytes::copy_from_slice(&i.to_be_bytes()));
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
                let before = s.get(&key).map_or(0, |e| e.version);
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
        assert_eq!(s.get(b"a").unwrap().value.len(), 50);
        // Deleting frees all of it.
        s.delete(b"a", None).unwrap();
        s.delete(b"b", None).unwrap();
        assert_eq!(s.memory_used(), 0);
        assert!(s.is_empty());
    }
}
