//! Workload generation and measurement for `ramkv-bench`.
