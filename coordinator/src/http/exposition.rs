//! A writer of the Prometheus text exposition format, version 0.0.4: `# HELP` and `# TYPE`
//! lines, then the family's samples, label values and help text escaped as the format
//! requires.

use std::fmt::Write as _;

/// The `Content-Type` of a response in this format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The type of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    Gauge,
    Histogram,
}

impl MetricType {
    fn as_str(self) -> &'static str {
        match self {
            MetricType::Gauge => "gauge",
            MetricType::Histogram => "histogram",
        }
    }
}

/// A sample value: counts print exactly, however large; floats as the format spells them.
pub trait SampleValue {
    fn write_to(&self, out: &mut String);
}

impl SampleValue for u64 {
    fn write_to(&self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
}

impl SampleValue for f64 {
    fn write_to(&self, out: &mut String) {
        write_float(out, *self);
    }
}

/// Observations of one histogram series, as Prometheus exposes them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// `(upper bound, observations <= bound)`, bounds ascending, so the counts are cumulative
    /// and never decrease. The `+Inf` bucket is `count` and is not listed.
    pub buckets: Vec<(f64, u64)>,
    pub sum: f64,
    pub count: u64,
}

/// Builds one exposition. Each family is started with [`Encoder::family`] and followed by
/// all of its samples: the format wants a family's samples together.
#[derive(Debug, Default)]
pub struct Encoder {
    out: String,
}

impl Encoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts the family `name`: its `# HELP` and `# TYPE` lines.
    pub fn family(&mut self, name: &str, kind: MetricType, help: &str) {
        let _ = write!(self.out, "# HELP {name} ");
        for c in help.chars() {
            match c {
                '\\' => self.out.push_str("\\\\"),
                '\n' => self.out.push_str("\\n"),
                c => self.out.push(c),
            }
        }
        let _ = writeln!(self.out, "\n# TYPE {name} {}", kind.as_str());
    }

    /// Writes one sample line: `name{label="value",...} value`.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl SampleValue) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (index, (label, value)) in labels.iter().enumerate() {
                if index > 0 {
                    self.out.push(',');
                }
                self.out.push_str(label);
                self.out.push_str("=\"");
                escape_label_value(&mut self.out, value);
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
        value.write_to(&mut self.out);
        self.out.push('\n');
    }

    /// Writes one histogram series of the family `name`: `name_bucket` for each bound and
    /// `+Inf`, then `name_sum` and `name_count`, all with `labels`.
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], histogram: &Histogram) {
        let bucket = format!("{name}_bucket");
        let bounds: Vec<String> = histogram
            .buckets
            .iter()
            .map(|(bound, _)| {
                let mut text = String::new();
                write_float(&mut text, *bound);
                text
            })
            .collect();
        let les = bounds.iter().map(String::as_str).chain(["+Inf"]);
        let counts = histogram.buckets.iter().map(|(_, count)| *count);
        for (le, count) in les.zip(counts.chain([histogram.count])) {
            let mut with_le = labels.to_vec();
            with_le.push(("le", le));
            self.sample(&bucket, &with_le, count);
        }
        self.sample(&format!("{name}_sum"), labels, histogram.sum);
        self.sample(&format!("{name}_count"), labels, histogram.count);
    }

    /// Returns the exposition text.
    pub fn finish(self) -> String {
        self.out
    }
}

fn escape_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Rust prints infinities as `inf`; the format wants `+Inf` and `-Inf`. Finite values print
/// in the shortest form that reads back exactly, without exponent (`0.5`, `300`).
fn write_float(out: &mut String, value: f64) {
    if value == f64::INFINITY {
        out.push_str("+Inf");
    } else if value == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else if value.is_nan() {
        out.push_str("NaN");
    } else {
        let _ = write!(out, "{value}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_and_type_come_before_the_samples() {
        let mut encoder = Encoder::new();
        encoder.family("warden_x", MetricType::Gauge, "An x.\nSee C:\\x.");
        encoder.sample("warden_x", &[], 3u64);
        encoder.sample("warden_x", &[("a", "1"), ("b", "2")], 0.25);
        assert_eq!(
            encoder.finish(),
            "# HELP warden_x An x.\\nSee C:\\\\x.\n\
             # TYPE warden_x gauge\n\
             warden_x 3\n\
             warden_x{a=\"1\",b=\"2\"} 0.25\n"
        );
    }

    #[test]
    fn label_values_escape_backslash_quote_and_newline() {
        let mut encoder = Encoder::new();
        encoder.sample("m", &[("database", "a\\b\"c\nd")], 1u64);
        assert_eq!(encoder.finish(), "m{database=\"a\\\\b\\\"c\\nd\"} 1\n");
    }

    #[test]
    fn special_floats_and_large_counts_are_spelled_as_the_format_wants() {
        let mut encoder = Encoder::new();
        encoder.sample("m", &[], f64::INFINITY);
        encoder.sample("m", &[], f64::NEG_INFINITY);
        encoder.sample("m", &[], f64::NAN);
        encoder.sample("m", &[], u64::MAX);
        encoder.sample("m", &[], 1e21);
        assert_eq!(
            encoder.finish(),
            "m +Inf\nm -Inf\nm NaN\nm 18446744073709551615\nm 1000000000000000000000\n"
        );
    }

    #[test]
    fn a_histogram_ends_with_inf_sum_and_count() {
        let mut encoder = Encoder::new();
        let histogram = Histogram {
            buckets: vec![(0.5, 1), (10.0, 3)],
            sum: 12.5,
            count: 4,
        };
        encoder.histogram("h", &[("kind", "backup")], &histogram);
        assert_eq!(
            encoder.finish(),
            "h_bucket{kind=\"backup\",le=\"0.5\"} 1\n\
             h_bucket{kind=\"backup\",le=\"10\"} 3\n\
             h_bucket{kind=\"backup\",le=\"+Inf\"} 4\n\
             h_sum{kind=\"backup\"} 12.5\n\
             h_count{kind=\"backup\"} 4\n"
        );
    }
}
