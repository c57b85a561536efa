//! Chooses the store's map by measurement: ramkv's sharded RwLock map
//! against dashmap and papaya, under Zipf-0.99 hot keys.
//!
//! `cargo bench --bench store_zipf -- [THREADS] [SECONDS]`
//! Prints one line per (map, mix): million operations per second, all threads together.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};

const KEYS: u64 = 100_000;
const VALUE: &[u8] = &[7u8; 64];

trait Map: Send + Sync {
    fn get(&self, k: &[u8]) -> Option<(Bytes, u64)>;
    fn put(&self, k: &[u8], v: &[u8]);
}

impl Map for ramkv::kv::store::Store {
    fn get(&self, k: &[u8]) -> Option<(Bytes, u64)> {
        // A copy of the value, as the other maps' `Bytes` clone is not: the
        // store's reads hand out the item itself (`Item`), so this measures
        // the lookup plus a small copy.
        ramkv::kv::store::Store::get(self, k)
            .map(|e| (Bytes::copy_from_slice(e.value()), e.version()))
    }
    fn put(&self, k: &[u8], v: &[u8]) {
        let _ = ramkv::kv::store::Store::put(self, k, v, None);
    }
}

struct Dash(dashmap::DashMap<Bytes, (Bytes, u64)>, AtomicU64);
impl Map for Dash {
    fn get(&self, k: &[u8]) -> Option<(Bytes, u64)> {
        self.0.get(k).map(|e| e.value().clone())
    }
    fn put(&self, k: &[u8], v: &[u8]) {
        let ver = self.1.fetch_add(1, Ordering::Relaxed);
        self.0
            .insert(Bytes::copy_from_slice(k), (Bytes::copy_from_slice(v), ver));
    }
}

struct Papaya(papaya::HashMap<Bytes, (Bytes, u64)>, AtomicU64);
impl Map for Papaya {
    fn get(&self, k: &[u8]) -> Option<(Bytes, u64)> {
        self.0.pin().get(k).cloned()
    }
    fn put(&self, k: &[u8], v: &[u8]) {
        let ver = self.1.fetch_add(1, Ordering::Relaxed);
        self.0
            .pin()
            .insert(Bytes::copy_from_slice(k), (Bytes::copy_from_slice(v), ver));
    }
}

fn run(map: Arc<dyn Map>, threads: usize, secs: f64, get_ratio: f64) -> f64 {
    for k in 0..KEYS {
        map.put(format!("key:{k:08}").as_bytes(), VALUE);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (map, stop) = (map.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(t as u64);
                let zipf = Zipf::new(KEYS as f64, 0.99).unwrap();
                // Pre-draw keys so the timed loop measures the map, not the RNG.
                let keys: Vec<Vec<u8>> = (0..65_536)
                    .map(|_| format!("key:{:08}", zipf.sample(&mut rng) as u64 - 1).into_bytes())
                    .collect();
                let gets: Vec<bool> = (0..65_536).map(|_| rng.random_bool(get_ratio)).collect();
                let mut ops = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for i in 0..1024 {
                        let j = (ops as usize + i) & 65_535;
                        if gets[j] {
                            black_box(map.get(&keys[j]));
                        } else {
                            map.put(&keys[j], VALUE);
                        }
                    }
                    ops += 1024;
                }
                ops
            })
        })
        .collect();
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    let total: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    total as f64 / start.elapsed().as_secs_f64() / 1e6
}

fn main() {
    let args: Vec<String> = std::env::args().filter(|a| !a.starts_with("--")).collect();
    let threads = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(2);
    let secs = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(2.0);
    println!("threads={threads} keys={KEYS} zipf=0.99 value=64B seconds={secs}");
    println!(
        "{:<24} {:>10} {:>10} {:>10}",
        "map", "100% get", "95% get", "50% get"
    );
    type Make = fn() -> Arc<dyn Map>;
    let maps: [(&str, Make); 3] = [
        ("ramkv sharded RwLock", || {
            Arc::new(ramkv::kv::store::Store::new(u64::MAX))
        }),
        ("dashmap 6", || {
            Arc::new(Dash(Default::default(), AtomicU64::new(0)))
        }),
        ("papaya 0.2", || {
            Arc::new(Papaya(Default::default(), AtomicU64::new(0)))
        }),
    ];
    for (name, make) in maps {
        let r: Vec<String> = [1.0, 0.95, 0.5]
            .iter()
            .map(|&g| format!("{:>10.2}", run(make(), threads, secs, g)))
            .collect();
        println!("{name:<24} {} Mops/s", r.join(" "));
    }
}
