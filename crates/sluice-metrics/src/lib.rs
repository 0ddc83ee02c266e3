//! Prometheus metrics in text exposition format, without a framework.
//!
//! Families are few and label sets small (routes x methods x statuses), so each family is a
//! short list behind a mutex: a lookup is a scan of a few dozen entries, cheaper than hashing
//! owned strings on every request.

use std::fmt::Write;
use std::sync::Mutex;

use sluice_state::LockRecover;

/// Seconds; spans a cached 5 KB read on loopback up to a slow multi-GB transfer.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

pub struct CounterVec {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    series: Mutex<Vec<(Vec<String>, u64)>>,
}

impl CounterVec {
    pub const fn new(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
    ) -> Self {
        Self {
            name,
            help,
            labels,
            series: Mutex::new(Vec::new()),
        }
    }

    pub fn inc_by(&self, values: &[&str], by: u64) {
        let mut series = self.series.lock_or_recover();
        match series.iter_mut().find(|(k, _)| same(k, values)) {
            Some((_, v)) => *v += by,
            None => series.push((owned(values), by)),
        }
    }

    pub fn get(&self, values: &[&str]) -> u64 {
        self.series
            .lock_or_recover()
            .iter()
            .find(|(k, _)| same(k, values))
            .map_or(0, |(_, v)| *v)
    }

    pub fn render(&self, out: &mut String) {
        header(out, self.name, self.help, "counter");
        let series = self.series.lock_or_recover();
        for (values, v) in series.iter() {
            let _ = writeln!(
                out,
                "{}{} {v}",
                self.name,
                label_text(self.labels, values, None)
            );
        }
    }
}

struct HistogramSeries {
    values: Vec<String>,
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

pub struct HistogramVec {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    buckets: &'static [f64],
    series: Mutex<Vec<HistogramSeries>>,
}

impl HistogramVec {
    pub const fn new(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
        buckets: &'static [f64],
    ) -> Self {
        Self {
            name,
            help,
            labels,
            buckets,
            series: Mutex::new(Vec::new()),
        }
    }

    pub fn observe(&self, values: &[&str], sample: f64) {
        let mut series = self.series.lock_or_recover();
        let idx = match series.iter().position(|s| same(&s.values, values)) {
            Some(i) => i,
            None => {
                series.push(HistogramSeries {
                    values: owned(values),
                    counts: vec![0; self.buckets.len()],
                    sum: 0.0,
                    count: 0,
                });
                series.len() - 1
            }
        };
        let s = &mut series[idx];
        if let Some(b) = self.buckets.iter().position(|&le| sample <= le) {
            s.counts[b] += 1;
        }
        s.sum += sample;
        s.count += 1;
    }

    pub fn render(&self, out: &mut String) {
        header(out, self.name, self.help, "histogram");
        let series = self.series.lock_or_recover();
        for s in series.iter() {
            let mut cumulative = 0;
            for (le, n) in self.buckets.iter().zip(&s.counts) {
                cumulative += n;
                let labels = label_text(self.labels, &s.values, Some(&le.to_string()));
                let _ = writeln!(out, "{}_bucket{labels} {cumulative}", self.name);
            }
            let labels = label_text(self.labels, &s.values, Some("+Inf"));
            let _ = writeln!(out, "{}_bucket{labels} {}", self.name, s.count);
            let plain = label_text(self.labels, &s.values, None);
            let _ = writeln!(out, "{}_sum{plain} {}", self.name, s.sum);
            let _ = writeln!(out, "{}_count{plain} {}", self.name, s.count);
        }
    }
}

/// Writes one unlabelled counter kept elsewhere (an atomic, say).
pub fn render_counter(out: &mut String, name: &str, help: &str, value: u64) {
    header(out, name, help, "counter");
    let _ = writeln!(out, "{name} {value}");
}

/// Writes one unlabelled gauge.
pub fn render_gauge(out: &mut String, name: &str, help: &str, value: u64) {
    header(out, name, help, "gauge");
    let _ = writeln!(out, "{name} {value}");
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn same(stored: &[String], values: &[&str]) -> bool {
    stored.len() == values.len() && stored.iter().zip(values).all(|(a, b)| a == b)
}

fn owned(values: &[&str]) -> Vec<String> {
    values.iter().map(|v| (*v).to_owned()).collect()
}

fn label_text(names: &[&str], values: &[String], le: Option<&str>) -> String {
    let mut pairs: Vec<String> = names
        .iter()
        .zip(values)
        .map(|(n, v)| format!("{n}=\"{}\"", escape(v)))
        .collect();
    if let Some(le) = le {
        pairs.push(format!("le=\"{le}\""));
    }
    if pairs.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", pairs.join(","))
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_text() {
        let c = CounterVec::new("sluice_x_total", "Things.", &["route", "status"]);
        c.inc_by(&["/a", "200"], 2);
        c.inc_by(&["/a", "200"], 1);
        c.inc_by(&["/b\"", "404"], 1);
        let mut out = String::new();
        c.render(&mut out);
        assert!(out.contains("# TYPE sluice_x_total counter"));
        assert!(out.contains("sluice_x_total{route=\"/a\",status=\"200\"} 3"));
        assert!(out.contains("sluice_x_total{route=\"/b\\\"\",status=\"404\"} 1"));
        assert_eq!(c.get(&["/a", "200"]), 3);
    }

    #[test]
    fn histogram_is_cumulative() {
        let h = HistogramVec::new("sluice_d_seconds", "D.", &["route"], &[0.1, 1.0]);
        h.observe(&["/a"], 0.05);
        h.observe(&["/a"], 0.5);
        h.observe(&["/a"], 5.0);
        let mut out = String::new();
        h.render(&mut out);
        assert!(out.contains("sluice_d_seconds_bucket{route=\"/a\",le=\"0.1\"} 1"));
        assert!(out.contains("sluice_d_seconds_bucket{route=\"/a\",le=\"1\"} 2"));
        assert!(out.contains("sluice_d_seconds_bucket{route=\"/a\",le=\"+Inf\"} 3"));
        assert!(out.contains("sluice_d_seconds_count{route=\"/a\"} 3"));
    }
}
