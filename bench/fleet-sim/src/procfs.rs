//! What the kernel says a process used: CPU time from `/proc/PID/stat` (user + system, in
//! clock ticks) and memory from `/proc/PID/status` (`VmRSS` now, `VmHWM` its peak).

use std::time::Instant;

use anyhow::{Context, bail};

/// A reading of a process's CPU time, and when it was taken.
#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    ticks: u64,
    at: Instant,
}

impl CpuSample {
    /// Reads the CPU time `pid` has used so far (`self` for this process).
    pub fn take(pid: &str) -> anyhow::Result<Self> {
        let path = format!("/proc/{pid}/stat");
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        let ticks = parse_cpu_ticks(&text).with_context(|| format!("cannot parse {path}"))?;
        Ok(Self {
            ticks,
            at: Instant::now(),
        })
    }

    /// Returns the cores used on average from `earlier` to this sample: 1.0 is one core
    /// busy all the time.
    pub fn cores_since(&self, earlier: &CpuSample) -> f64 {
        let seconds = self.at.duration_since(earlier.at).as_secs_f64();
        if seconds <= 0.0 {
            return 0.0;
        }
        let ticks = self.ticks.saturating_sub(earlier.ticks) as f64;
        ticks / clock_ticks_per_second() / seconds
    }
}

fn clock_ticks_per_second() -> f64 {
    rustix::param::clock_ticks_per_second() as f64
}

/// `utime + stime` from a `/proc/PID/stat` line. The command name (field 2) is in
/// parentheses and may hold spaces and parentheses itself, so fields are counted from the
/// last `)`: the state is field 3, utime field 14 and stime field 15.
fn parse_cpu_ticks(stat: &str) -> anyhow::Result<u64> {
    let Some((_, rest)) = stat.rsplit_once(')') else {
        bail!("no ')' after the command name");
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |number: usize| -> anyhow::Result<u64> {
        let text = fields
            .get(number - 3)
            .with_context(|| format!("field {number} is missing"))?;
        text.parse()
            .with_context(|| format!("field {number} is not a number: {text:?}"))
    };
    Ok(field(14)? + field(15)?)
}

/// Resident memory of a process, in KiB.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Memory {
    /// `VmRSS`: resident now.
    pub rss_kib: u64,
    /// `VmHWM`: the most it was ever resident.
    pub peak_rss_kib: u64,
}

impl Memory {
    /// Reads `pid`'s resident memory now and at its peak.
    pub fn take(pid: &str) -> anyhow::Result<Self> {
        let path = format!("/proc/{pid}/status");
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        parse_memory(&text).with_context(|| format!("cannot parse {path}"))
    }
}

fn parse_memory(status: &str) -> anyhow::Result<Memory> {
    let kib = |key: &str| -> anyhow::Result<u64> {
        let line = status
            .lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
            .with_context(|| format!("no {key} line"))?;
        let number = line.trim().trim_end_matches("kB").trim();
        number
            .parse()
            .with_context(|| format!("{key} is not a number of kB: {line:?}"))
    };
    Ok(Memory {
        rss_kib: kib("VmRSS")?,
        peak_rss_kib: kib("VmHWM")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_user_plus_system_even_with_parentheses_in_the_name() {
        let stat = "4242 (warden (co) x) S 1 4242 4242 0 -1 4194560 2097 0 0 0 \
                    1500 250 0 0 20 0 9 0 123456 1000000 2500 18446744073709551615";
        assert_eq!(parse_cpu_ticks(stat).expect("parses"), 1750);
        assert!(parse_cpu_ticks("4242 (short) S 1 2").is_err());
    }

    #[test]
    fn memory_reads_rss_and_its_peak() {
        let status = "Name:\twarden-coordina\nVmPeak:\t  900000 kB\nVmHWM:\t  524288 kB\n\
                      VmRSS:\t  262144 kB\nThreads:\t3\n";
        let memory = parse_memory(status).expect("parses");
        assert_eq!((memory.rss_kib, memory.peak_rss_kib), (262_144, 524_288));
        assert!(parse_memory("Name:\tx\n").is_err());
    }

    #[test]
    fn this_process_can_be_measured() {
        let before = CpuSample::take("self").expect("stat");
        let mut spin = 0u64;
        let started = Instant::now();
        while started.elapsed().as_millis() < 50 {
            spin = spin.wrapping_add(1);
        }
        assert!(spin > 0);
        let after = CpuSample::take("self").expect("stat");
        assert!(after.cores_since(&before) >= 0.0);
        assert!(Memory::take("self").expect("status").rss_kib > 0);
    }
}
