//! A one-line progress display on stderr, shown only when stderr is a terminal.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sluice_state::LockRecover;

pub struct Progress {
    label: String,
    enabled: bool,
    started: Instant,
    last: Mutex<Option<Instant>>,
}

impl Progress {
    pub fn new(label: String) -> Self {
        Self {
            label,
            enabled: std::io::stderr().is_terminal(),
            started: Instant::now(),
            last: Mutex::new(None),
        }
    }

    /// Redraws at most ten times a second.
    pub fn update(&self, done: u64, total: Option<u64>) {
        if !self.enabled {
            return;
        }
        let mut last = self.last.lock_or_recover();
        if last.is_some_and(|t| t.elapsed() < Duration::from_millis(100)) && total != Some(done) {
            return;
        }
        *last = Some(Instant::now());
        let line = line(&self.label, done, total, self.started.elapsed());
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K{line}");
        let _ = err.flush();
    }

    pub fn finish(&self) {
        if self.enabled {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
        }
    }
}

/// `LABEL  DONE / TOTAL  PCT%  RATE/s  TIME left` (what is known of it so far).
fn line(label: &str, done: u64, total: Option<u64>, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    // A rate from less than a fifth of a second says little.
    let rate = (secs >= 0.2).then(|| done as f64 / secs);
    let mut out = match total {
        Some(t) if t > 0 => format!(
            "{label}  {} / {}  {:>3}%",
            human(done),
            human(t),
            done.saturating_mul(100) / t
        ),
        _ => format!("{label}  {}", human(done)),
    };
    if let Some(rate) = rate {
        out.push_str(&format!("  {}/s", human(rate as u64)));
        if let Some(t) = total.filter(|t| *t > done && rate > 0.0) {
            let left = Duration::from_secs_f64((t - done) as f64 / rate);
            out.push_str(&format!("  {} left", clock(left)));
        }
    }
    out
}

/// `42s`, `3m05s`, `1h02m`.
fn clock(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_says_rate_and_time_left_once_it_knows_them() {
        assert_eq!(
            line("a.mp4", 0, Some(1000), Duration::from_millis(10)),
            "a.mp4  0 B / 1000 B    0%"
        );
        assert_eq!(
            line("a.mp4", 2 << 20, Some(10 << 20), Duration::from_secs(2)),
            "a.mp4  2.0 MiB / 10.0 MiB   20%  1.0 MiB/s  8s left"
        );
        assert_eq!(
            line("b", 600 << 20, Some(1 << 40), Duration::from_secs(60)),
            "b  600.0 MiB / 1.0 TiB    0%  10.0 MiB/s  29h06m left"
        );
        assert_eq!(
            line("c", 5 << 20, None, Duration::from_secs(5)),
            "c  5.0 MiB  1.0 MiB/s"
        );
        assert_eq!(clock(Duration::from_secs(185)), "3m05s");
    }
}
