//! What the daemon tells people: the kernel's decision events (read, named, logged and
//! streamed), the decisions counted from them, the Prometheus metrics, and what the service
//! manager hears (readiness, status, watchdog).

pub mod event_feed;
pub mod event_followers;
pub mod event_log;
pub mod event_record;
pub mod log;
pub mod metrics;
pub mod systemd;
pub mod tally;
