//! Prometheus metrics: counters and histograms kept in memory and rendered as text.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

/// Request latency buckets, in seconds: 50 µs to 5 s.
const LATENCY: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0,
];

/// Run duration buckets, in seconds: 100 ms to 2 h.
const RUN: &[f64] = &[
    0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0,
];

#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    /// Per bucket (not cumulative), plus one for `+Inf`.
    counts: Vec<u64>,
    sum: f64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
        }
    }

    fn observe(&mut self, v: f64) {
        let i = self.bounds.partition_point(|b| *b < v);
        self.counts[i] += 1;
        self.sum += v;
    }
}

/// A metric family: its type, help text and series by label set.
#[derive(Debug, Default)]
struct Family {
    kind: &'static str,
    help: &'static str,
    values: BTreeMap<String, f64>,
    histograms: BTreeMap<String, Histogram>,
}

/// Every series the service exports, by family name (`slate_...`).
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    families: BTreeMap<&'static str, Family>,
}

/// Label values are written as Prometheus string literals.
pub(crate) fn labels(pairs: &[(&str, &str)]) -> String {
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| {
            let v = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{k}=\"{v}\"")
        })
        .collect();
    format!("{{{}}}", inner.join(","))
}

impl Metrics {
    fn family(
        &mut self,
        name: &'static str,
        kind: &'static str,
        help: &'static str,
    ) -> &mut Family {
        self.families.entry(name).or_insert_with(|| Family {
            kind,
            help,
            ..Family::default()
        })
    }

    pub(crate) fn add(&mut self, name: &'static str, help: &'static str, labels: String, by: f64) {
        *self
            .family(name, "counter", help)
            .values
            .entry(labels)
            .or_default() += by;
    }

    pub(crate) fn set(&mut self, name: &'static str, help: &'static str, labels: String, v: f64) {
        self.family(name, "gauge", help).values.insert(labels, v);
    }

    fn observe(
        &mut self,
        name: &'static str,
        help: &'static str,
        bounds: &'static [f64],
        labels: String,
        v: f64,
    ) {
        self.family(name, "histogram", help)
            .histograms
            .entry(labels)
            .or_insert_with(|| Histogram::new(bounds))
            .observe(v);
    }

    pub(crate) fn request(&mut self, route: &str, method: &str, code: u16, took: Duration) {
        let code = code.to_string();
        self.add(
            "slate_http_requests_total",
            "HTTP requests by route, method and status code.",
            labels(&[("route", route), ("method", method), ("code", &code)]),
            1.0,
        );
        self.observe(
            "slate_http_request_duration_seconds",
            "HTTP request latency by route, from the request read to the response written.",
            LATENCY,
            labels(&[("route", route), ("method", method)]),
            took.as_secs_f64(),
        );
    }

    pub(crate) fn run_duration(&mut self, query: &str, seconds: f64) {
        self.observe(
            "slate_run_duration_seconds",
            "Duration of committed runs by query.",
            RUN,
            labels(&[("query", query)]),
            seconds,
        );
    }

    /// The text exposition format, families sorted by name.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        for (name, f) in &self.families {
            let _ = writeln!(out, "# HELP {name} {}", f.help);
            let _ = writeln!(out, "# TYPE {name} {}", f.kind);
            for (l, v) in &f.values {
                let _ = writeln!(out, "{name}{l} {v}");
            }
            for (l, h) in &f.histograms {
                // `le` joins the series' own labels.
                let inner = l.trim_start_matches('{').trim_end_matches('}');
                let sep = if inner.is_empty() { "" } else { "," };
                let mut cumulative = 0;
                for (i, b) in h.bounds.iter().enumerate() {
                    cumulative += h.counts[i];
                    let _ = writeln!(out, "{name}_bucket{{{inner}{sep}le=\"{b}\"}} {cumulative}");
                }
                cumulative += h.counts[h.bounds.len()];
                let _ = writeln!(out, "{name}_bucket{{{inner}{sep}le=\"+Inf\"}} {cumulative}");
                let _ = writeln!(out, "{name}_sum{l} {}", h.sum);
                let _ = writeln!(out, "{name}_count{l} {cumulative}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_labels_escaped() {
        let mut m = Metrics::default();
        m.request("/healthz", "GET", 200, Duration::from_micros(80));
        m.request("/healthz", "GET", 200, Duration::from_millis(3));
        m.add("slate_x_total", "x", labels(&[("q", "a\"b")]), 2.0);
        let text = m.render();
        assert!(text.contains(
            "slate_http_request_duration_seconds_bucket{route=\"/healthz\",method=\"GET\",le=\"0.0001\"} 1"
        ));
        assert!(text.contains(
            "slate_http_request_duration_seconds_bucket{route=\"/healthz\",method=\"GET\",le=\"0.005\"} 2"
        ));
        assert!(text.contains(
            "slate_http_request_duration_seconds_count{route=\"/healthz\",method=\"GET\"} 2"
        ));
        assert!(text.contains("slate_x_total{q=\"a\\\"b\"} 2"));
        assert!(text.contains("# TYPE slate_http_requests_total counter"));
    }
}
