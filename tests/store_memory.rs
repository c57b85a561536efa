//! `--max-memory` bounds what the store really holds: its charge per item
//! covers at least the heap bytes the store asks for (items, their tables).
//! A counting global allocator tracks live heap bytes around 20,000 puts
//! and gets of 16-byte keys and 100-byte values, the shape
//! `bench/item-memory.sh` measures. The allocator's own headers and rounding
//! come on top of these bytes, so this is a lower bound on what the charge
//! must cover. With a charge of 40 bytes per entry over key and value, it
//! fails: 156 bytes charged per item for 166 of heap.
//!
//! One test in this file: the allocator counts the whole process.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, Ordering};

use ramkv::kv::store::Store;

struct Counting;

static LIVE: AtomicI64 = AtomicI64::new(0);

// SAFETY: defers every call to the system allocator unchanged; it only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn the_memory_charge_covers_the_heap_the_store_holds() {
    const ITEMS: usize = 20_000;
    let store = Store::new(u64::MAX);
    let keys: Vec<String> = (0..ITEMS).map(|i| format!("key-{i:012}")).collect();
    assert!(keys.iter().all(|k| k.len() == 16));
    let value = [b'v'; 100];
    let before = LIVE.load(Ordering::Relaxed);
    for k in &keys {
        store.put(k.as_bytes(), &value, None).unwrap();
    }
    // Reading shares an item; it must leave nothing behind.
    for k in &keys {
        assert_eq!(store.get(k.as_bytes()).unwrap().value().len(), 100);
    }
    let held = (LIVE.load(Ordering::Relaxed) - before) as u64;
    let charged = store.memory_used();
    assert!(
        charged >= held,
        "charged {charged} bytes ({} per item) for {held} bytes of heap ({} per item)",
        charged / ITEMS as u64,
        held / ITEMS as u64
    );
}
