//! What the CLI prints: the apply report, progress, run summaries, watermarks.

use indicatif::{ProgressBar, ProgressStyle};
use slate_engine::{Progress, QueryPlan, RunSummary};
use slate_project::Project;
use slate_stores::Watermark;
use slate_types::format_rfc3339 as time;
use std::io::IsTerminal;
use std::time::Duration;

pub fn apply_report(project: &Project, plans: &[QueryPlan]) -> String {
    let n = |count: usize, one: &str, many: &str| {
        format!("{count} {}", if count == 1 { one } else { many })
    };
    let mut s = format!(
        "project `{}` is valid: {}, {}, {}, {}\n",
        project.name,
        n(project.classes.len(), "feature class", "feature classes"),
        n(project.sql_resolvers.len(), "SQL resolver", "SQL resolvers"),
        n(
            project.model_resolvers.len(),
            "model resolver",
            "model resolvers"
        ),
        n(
            project.queries.len(),
            "scheduled query",
            "scheduled queries"
        )
    );
    for p in plans {
        s.push('\n');
        s.push_str(&p.render());
    }
    s
}

fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn summary(s: &RunSummary) -> String {
    let wm = |w: Option<i64>| w.map_or("(none)".to_string(), time);
    let stages: Vec<String> = s
        .stages
        .iter()
        .map(|(n, d)| format!("{n} {:.2}s", d.as_secs_f64()))
        .collect();
    format!(
        "run {} committed\n  rows ingested  {}\n  rows scored    {}\n  fraud rate     {:.2}% ({} flagged)\n  watermark      {} -> {}\n  time           {}\n",
        s.run_id,
        thousands(s.rows_ingested),
        thousands(s.rows_scored),
        s.fraud_rate() * 100.0,
        thousands(s.positives),
        wm(s.watermark_before),
        wm(s.watermark_after),
        stages.join(", ")
    )
}

pub fn watermarks(w: &[Watermark]) -> String {
    if w.is_empty() {
        return "no watermarks yet: the next run of each query reads all rows\n".into();
    }
    let mut s = format!("{:<24} {:<28} {}\n", "QUERY", "RESOLVER", "WATERMARK");
    for m in w {
        s.push_str(&format!(
            "{:<24} {:<28} {}\n",
            m.query,
            m.resolver,
            time(m.micros)
        ));
    }
    s
}

/// A spinner on a terminal, plain lines on stderr otherwise.
pub struct CliProgress {
    bar: Option<ProgressBar>,
}

impl CliProgress {
    pub fn new() -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = ProgressBar::new_spinner();
            b.set_style(
                ProgressStyle::with_template("{spinner} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            b.enable_steady_tick(Duration::from_millis(100));
            b
        });
        CliProgress { bar }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl Progress for CliProgress {
    fn stage(&self, name: &str) {
        if let Some(b) = &self.bar {
            b.set_message(format!("{name}..."));
        }
    }

    fn done(&self, name: &str, detail: &str, took: Duration) {
        let line = format!("{name:<8} {detail} ({:.2}s)", took.as_secs_f64());
        match &self.bar {
            Some(b) => b.println(line),
            None => eprintln!("{line}"),
        }
    }
}
