//! Retry policy for reconnecting to the coordinator.

use std::time::Duration;

use backon::ExponentialBuilder;

/// Full-jitter exponential backoff from 200 ms up to 10 s between attempts, forever.
pub fn reconnect_backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(10))
        .with_jitter()
        .without_max_times()
}
