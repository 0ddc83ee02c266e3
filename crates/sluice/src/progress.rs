//! A one-line progress display on stderr, shown only when stderr is a terminal.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sluice_state::LockRecover;

pub struct Progress {
    label: String,
    enabled: bool,
    last: Mutex<Option<Instant>>,
}

impl Progress {
    pub fn new(label: String) -> Self {
        Self {
            label,
            enabled: std::io::stderr().is_terminal(),
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
        let line = match total {
            Some(t) if t > 0 => format!(
                "{}  {} / {}  {:>3}%",
                self.label,
                human(done),
                human(t),
                done * 100 / t
            ),
            _ => format!("{}  {}", self.label, human(done)),
        };
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
