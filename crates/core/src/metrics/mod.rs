//! The metrics the core records as things happen: counters and histograms in one static registry,
//! with no dependency on any other module. The HTTP adapter (`http/metrics.rs` of the server
//! crate) renders them with the gauges it reads at scrape time.

mod registry;

pub use registry::{Histogram, RECORDED, family_header, gauge_header, increment, sample};
