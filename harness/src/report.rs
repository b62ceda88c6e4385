//! One row per scenario, and the table they make.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Row {
    pub scenario: String,
    pub balancer: &'static str,
    pub requests: usize,
    pub failed: usize,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub detection: Option<Duration>,
    pub recovery: Option<Duration>,
    /// Empty when every promise held; otherwise what broke.
    pub problems: Vec<String>,
    pub notes: String,
}

impl Row {
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }
}

fn secs(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.2} s", d.as_secs_f64()))
        .unwrap_or_else(|| "-".to_owned())
}

/// A Markdown table, readable as plain text too.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| Scenario | LB | Requests | Failed | p50 ms | p95 ms | p99 ms | Detection | Recovery | Verdict | Notes |\n\
         | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |\n",
    );
    for r in rows {
        let verdict = if r.passed() {
            "PASS".to_owned()
        } else {
            format!("FAIL: {}", r.problems.join("; "))
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {} |\n",
            r.scenario,
            r.balancer,
            r.requests,
            r.failed,
            r.p50_ms,
            r.p95_ms,
            r.p99_ms,
            secs(r.detection),
            secs(r.recovery),
            verdict,
            r.notes
        ));
    }
    out
}
