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
        {
            let mut m = n(
                project.model_resolvers.len(),
                "model resolver",
                "model resolvers",
            );
            if !project.function_resolvers.is_empty() {
                m.push_str(&format!(
                    ", {}",
                    n(
                        project.function_resolvers.len(),
                        "function resolver",
                        "function resolvers"
                    )
                ));
            }
            m
        },
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

pub fn thousands(n: usize) -> String {
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
    let mut out = format!(
        "run {} committed\n  rows ingested  {}\n  rows scored    {}\n",
        s.run_id,
        thousands(s.rows_ingested),
        thousands(s.rows_scored),
    );
    let width = s.outputs.iter().map(|o| o.feature.len()).max().unwrap_or(0);
    for o in &s.outputs {
        out.push_str(&format!(
            "  output         {:<width$}  {} rows, {} null",
            o.feature,
            thousands(o.rows),
            thousands(o.nulls),
        ));
        if let (Some(t), Some(share)) = (o.true_count, o.true_share()) {
            out.push_str(&format!(", {} true ({:.2}%)", thousands(t), share * 100.0));
        }
        out.push('\n');
    }
    if let Some(l) = s.late_rows {
        out.push_str(&format!(
            "  late rows      {}{}\n",
            thousands(l),
            if l > 0 {
                " (arrived after their range was read; a longer lookback_period would catch them)"
            } else {
                ""
            }
        ));
    }
    out.push_str(&format!(
        "  watermark      {} -> {}\n  time           {}\n",
        wm(s.watermark_before),
        wm(s.watermark_after),
        stages.join(", ")
    ));
    out
}

pub fn runs(runs: &[slate_stores::RunRecord]) -> String {
    if runs.is_empty() {
        return "no runs recorded yet\n".into();
    }
    let wm = |w: Option<i64>| w.map_or("-".to_string(), time);
    let mut s = format!(
        "{:<24} {:<28} {:<10} {:<9} {:>12} {:>12} {:>6} {:>8}  {}\n",
        "QUERY",
        "TICK",
        "STATUS",
        "TRIGGER",
        "INGESTED",
        "COMPUTED",
        "LATE",
        "SECONDS",
        "WATERMARK"
    );
    for r in runs {
        let secs = if r.finished_micros >= r.started_micros && r.started_micros > 0 {
            format!("{:.2}", (r.finished_micros - r.started_micros) as f64 / 1e6)
        } else {
            "-".into()
        };
        s.push_str(&format!(
            "{:<24} {:<28} {:<10} {:<9} {:>12} {:>12} {:>6} {:>8}  {} -> {}\n",
            r.query,
            time(r.tick_micros),
            r.status.as_str(),
            if r.trigger.is_empty() {
                "-"
            } else {
                &r.trigger
            },
            thousands(r.rows_ingested),
            thousands(r.rows_scored),
            r.late_rows.map_or("-".into(), thousands),
            secs,
            wm(r.watermark_before),
            wm(r.watermark_after)
        ));
        if let Some(e) = &r.error {
            s.push_str(&format!("  error: {e}\n"));
        }
    }
    s
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

#[cfg(test)]
mod tests {
    use super::*;
    use slate_engine::OutputSummary;
    use std::time::Duration;

    #[test]
    fn summary_reports_each_output_and_the_share_of_true_for_booleans() {
        let s = RunSummary {
            run_id: "q@2026-01-01T00:00:00Z".into(),
            rows_ingested: 1200,
            rows_scored: 1000,
            outputs: vec![
                OutputSummary {
                    feature: "Order.is_late".into(),
                    rows: 1000,
                    nulls: 0,
                    true_count: Some(250),
                },
                OutputSummary {
                    feature: "Order.eta".into(),
                    rows: 1000,
                    nulls: 3,
                    true_count: None,
                },
            ],
            watermark_before: None,
            watermark_after: None,
            spilled_bytes: 0,
            stages: vec![("ingest".into(), Duration::from_millis(20))],
            late_rows: Some(7),
            record: slate_stores::RunRecord {
                run_id: "q@2026-01-01T00:00:00Z".into(),
                query: "q".into(),
                tick_micros: 0,
                status: slate_stores::RunStatus::Succeeded,
                trigger: "on_demand".into(),
                started_micros: 0,
                finished_micros: 0,
                rows_ingested: 1200,
                rows_scored: 1000,
                late_rows: Some(7),
                watermark_before: None,
                watermark_after: None,
                scans: vec![],
                outputs: vec![],
                stages: vec![],
                error: None,
            },
        };
        let text = summary(&s);
        assert!(
            text.contains(
                "  output         Order.is_late  1,000 rows, 0 null, 250 true (25.00%)\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("  output         Order.eta      1,000 rows, 3 null\n"),
            "{text}"
        );
        assert!(text.contains("  late rows      7 (arrived after"), "{text}");
        assert!(!text.to_lowercase().contains("fraud"));
    }
}
