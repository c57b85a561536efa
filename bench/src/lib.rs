//! `ramkv-bench`: an open-loop load generator that measures tail latency
//! from each request's *intended* send time, against ramkv, memcached or
//! Redis with the very same workload.
//!
//! # Layout
//! - [`dist`]: key, arrival, size and service-time distributions;
//! - [`protocol`]: the ramkv, memcache, Redis and echo wire protocols;
//! - [`engine`]: open- and closed-loop load, measured from intended send times;
//! - [`pacer`]: waiting for each send on a precise timer instead of a core;
//! - [`placement`]: which server dispatcher serves each connection;
//! - [`usage`]: the generator's own CPU, from `getrusage`;
//! - [`stats`]: medians and confidence intervals over repeated runs;
//! - [`report`]: tables, JSON, CSV and SVG plots;
//! - [`sim`]: a discrete-event model of the architectures (`ramkv-sim`).

#![warn(missing_docs)]

pub mod dist;
pub mod engine;
pub mod pacer;
pub mod placement;
pub mod protocol;
pub mod report;
pub mod sim;
pub mod stats;
pub mod usage;
