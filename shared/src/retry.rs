//! Retry policy for reconnecting to the coordinator.

use std::time::Duration;

use backon::ExponentialBuilder;

/// Exponential backoff from 200 ms, forever, with jitter so a restarted coordinator is not
/// hit by the whole fleet at once. backon adds up to one more delay of jitter on top of the
/// delay, so the 5 s cap keeps every wait under 10 s.
pub fn reconnect_backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
}
