//! Workload generation and measurement for `ramkv-bench`.
//!
//! - [`dist`]: key, arrival, size and service-time distributions;
//! - [`protocol`]: the ramkv, memcache and Redis wire protocols;
//! - [`engine`]: open- and closed-loop load, measured from intended send times;
//! - [`report`]: tables, JSON, CSV and SVG plots.

pub mod dist;
pub mod engine;
pub mod protocol;
pub mod report;
