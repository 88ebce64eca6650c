//! Formatting of sizes, rates, times and durations for people reading tables.
//!
//! Everything takes "now" as an argument where it matters so the output is testable.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

/// Shown in a table cell that has no value.
pub const NONE: &str = "-";

const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];

/// Formats a byte count with binary units: "512 B", "1.0 KiB", "12.3 MiB".
pub fn bytes(count: u64) -> String {
    if count < 1024 {
        return format!("{count} B");
    }
    // Precision loss above 2^53 bytes is far below the one decimal shown.
    #[allow(clippy::cast_precision_loss)]
    let mut value = count as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Formats a transfer rate: "4.5 MiB/s"; nothing for no or a nonsensical rate.
pub fn rate(bytes_per_sec: f64) -> Option<String> {
    if !bytes_per_sec.is_finite() || bytes_per_sec <= 0.0 {
        return None;
    }
    // Rates are far below u64::MAX; truncating the fraction of a byte is intended.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let whole = bytes_per_sec as u64;
    Some(format!("{}/s", bytes(whole)))
}

/// Converts wire milliseconds to a time; 0 (the wire's "absent") gives nothing.
pub fn datetime(unix_ms: i64) -> Option<DateTime<Utc>> {
    if unix_ms == 0 {
        None
    } else {
        DateTime::from_timestamp_millis(unix_ms)
    }
}

/// Formats a time as "2026-11-26 21:30:05Z", or "-" when absent.
pub fn time(unix_ms: i64) -> String {
    datetime(unix_ms).map_or_else(
        || NONE.to_owned(),
        |t| t.format("%Y-%m-%d %H:%M:%SZ").to_string(),
    )
}

/// Formats how long ago a time was: "12s ago", "3m ago", "5h ago", "2d ago"; "never" when
/// absent. Times slightly in the future (clock skew between hosts) count as "just now".
pub fn ago(unix_ms: i64, now_ms: i64) -> String {
    if unix_ms == 0 {
        return "never".to_owned();
    }
    let seconds = (now_ms - unix_ms) / 1000;
    match seconds {
        ..1 => "just now".to_owned(),
        1..60 => format!("{seconds}s ago"),
        60..3600 => format!("{}m ago", seconds / 60),
        3600..86_400 => format!("{}h ago", seconds / 3600),
        _ => format!("{}d ago", seconds / 86_400),
    }
}

/// Formats how far a time is from now: "in 3h 20m", "in 45s", "2d 4h ago", "now" within a
/// second; "-" when absent. For times that may lie on either side of now (openings, deadlines).
pub fn relative(unix_ms: i64, now_ms: i64) -> String {
    if unix_ms == 0 {
        return NONE.to_owned();
    }
    let seconds = (unix_ms - now_ms) / 1000;
    match seconds {
        0 => "now".to_owned(),
        1.. => format!("in {}", span(seconds.unsigned_abs())),
        _ => format!("{} ago", span(seconds.unsigned_abs())),
    }
}

/// Formats a time with how far it is from now: "2026-11-26 21:30:05Z (in 3h 20m)".
pub fn time_relative(unix_ms: i64, now_ms: i64) -> String {
    if unix_ms == 0 {
        return NONE.to_owned();
    }
    format!("{} ({})", time(unix_ms), relative(unix_ms, now_ms))
}

/// Formats a span of seconds in its two largest units: "45s", "12m", "3h 20m", "2d 4h".
fn span(seconds: u64) -> String {
    let two = |big: u64, big_unit: &str, small: u64, small_unit: &str| {
        if small == 0 {
            format!("{big}{big_unit}")
        } else {
            format!("{big}{big_unit} {small}{small_unit}")
        }
    };
    match seconds {
        ..60 => format!("{seconds}s"),
        60..3600 => format!("{}m", seconds / 60),
        3600..86_400 => two(seconds / 3600, "h", (seconds % 3600) / 60, "m"),
        _ => two(seconds / 86_400, "d", (seconds % 86_400) / 3600, "h"),
    }
}

/// Formats a duration in its two largest units, to the second: "45s", "30m", "3h 20m",
/// "2d 4h". For targets and ages, where `millis` would be needlessly precise.
pub fn duration(ms: u64) -> String {
    span(ms / 1000)
}

/// Formats a duration in milliseconds: "340ms", "1.2s", "3m 05s", "1h 02m".
pub fn millis(ms: u64) -> String {
    match ms {
        ..1000 => format!("{ms}ms"),
        1000..60_000 => format!("{}.{}s", ms / 1000, (ms % 1000) / 100),
        60_000..3_600_000 => format!("{}m {:02}s", ms / 60_000, (ms % 60_000) / 1000),
        _ => format!("{}h {:02}m", ms / 3_600_000, (ms % 3_600_000) / 60_000),
    }
}

/// Formats labels as "env=prod,region=eu" in key order, or "-" when there are none.
pub fn labels(labels: &HashMap<String, String>) -> String {
    if labels.is_empty() {
        return NONE.to_owned();
    }
    let mut pairs: Vec<_> = labels.iter().collect();
    pairs.sort();
    pairs
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Returns the text, or "-" when it is empty.
pub fn or_none(text: &str) -> String {
    if text.is_empty() {
        NONE.to_owned()
    } else {
        text.to_owned()
    }
}

/// Formats a flag as "yes" / "no".
pub fn yes_no(flag: bool) -> String {
    if flag { "yes" } else { "no" }.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_use_binary_units() {
        let cases = [
            (0, "0 B"),
            (1023, "1023 B"),
            (1024, "1.0 KiB"),
            (1536, "1.5 KiB"),
            (12_897_485, "12.3 MiB"),
            (1024 * 1024 * 1024, "1.0 GiB"),
            (5 * 1024_u64.pow(4), "5.0 TiB"),
            (u64::MAX, "16.0 EiB"),
        ];
        for (count, expected) in cases {
            assert_eq!(bytes(count), expected, "{count}");
        }
    }

    #[test]
    fn rates() {
        assert_eq!(rate(4.5 * 1024.0 * 1024.0).as_deref(), Some("4.5 MiB/s"));
        assert_eq!(rate(100.7).as_deref(), Some("100 B/s"));
        assert_eq!(rate(0.0), None);
        assert_eq!(rate(f64::NAN), None);
        assert_eq!(rate(-3.0), None);
    }

    #[test]
    fn times_are_utc_and_absent_is_a_dash() {
        // 2026-11-26T21:30:05.250Z
        assert_eq!(time(1_795_728_605_250), "2026-11-26 21:30:05Z");
        assert_eq!(time(0), "-");
    }

    #[test]
    fn relative_times() {
        let now = 1_795_728_605_000;
        assert_eq!(ago(0, now), "never");
        assert_eq!(ago(now + 2000, now), "just now");
        assert_eq!(ago(now - 12_000, now), "12s ago");
        assert_eq!(ago(now - 180_000, now), "3m ago");
        assert_eq!(ago(now - 5 * 3_600_000, now), "5h ago");
        assert_eq!(ago(now - 2 * 86_400_000, now), "2d ago");
    }

    #[test]
    fn times_on_either_side_of_now() {
        let now = 1_795_728_605_000;
        assert_eq!(relative(0, now), "-");
        assert_eq!(relative(now + 400, now), "now");
        assert_eq!(relative(now + 45_000, now), "in 45s");
        assert_eq!(relative(now + 12 * 60_000 + 30_000, now), "in 12m");
        assert_eq!(relative(now + 3 * 3_600_000, now), "in 3h");
        assert_eq!(
            relative(now + 3 * 3_600_000 + 20 * 60_000, now),
            "in 3h 20m"
        );
        assert_eq!(
            relative(now + 2 * 86_400_000 + 4 * 3_600_000, now),
            "in 2d 4h"
        );
        assert_eq!(relative(now - 90 * 60_000, now), "1h 30m ago");
        assert_eq!(
            time_relative(1_795_728_605_250 + 3_600_000, 1_795_728_605_250),
            "2026-11-26 22:30:05Z (in 1h)"
        );
        assert_eq!(time_relative(0, now), "-");
    }

    #[test]
    fn durations() {
        assert_eq!(millis(340), "340ms");
        assert_eq!(millis(1250), "1.2s");
        assert_eq!(millis(185_000), "3m 05s");
        assert_eq!(millis(3_720_000), "1h 02m");
        assert_eq!(duration(999), "0s");
        assert_eq!(duration(1_800_000), "30m");
        assert_eq!(duration(4 * 3_600_000 + 20 * 60_000 + 59_999), "4h 20m");
        assert_eq!(duration(2 * 86_400_000 + 3 * 3_600_000), "2d 3h");
    }

    #[test]
    fn labels_are_sorted() {
        let map = HashMap::from([
            ("region".to_owned(), "eu".to_owned()),
            ("env".to_owned(), "prod".to_owned()),
        ]);
        assert_eq!(labels(&map), "env=prod,region=eu");
        assert_eq!(labels(&HashMap::new()), "-");
    }
}
