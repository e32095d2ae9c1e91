//! What the agent counts and how it shows it: counters and per-series outcomes and latency
//! (`stats.rs`, sharded per connection), the latency buckets (`histogram.rs`), the
//! Prometheus text format (`exposition.rs`), and the loopback HTTP endpoint that serves it
//! (`endpoint.rs`). `status` (`ops/status.rs`) reads the same counters.

mod endpoint;
mod exposition;
mod histogram;
mod stats;

pub use endpoint::{bind_metrics, serve_metrics};
pub use histogram::Histogram;
pub use stats::{Series, SeriesKey, Shard, Stats, MAX_SERIES, OTHER_KEY};
