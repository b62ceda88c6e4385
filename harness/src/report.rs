//! One row per scenario, and the table they make.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Row {
    pub scenario: String,
    pub balancer: &'static str,
    pub requests: usize,
    /// Requests whose first attempt failed (not 2xx, or no answer): counted whatever a
    /// retry made of them.
    pub failed: usize,
    /// Requests the client sent more than once.
    pub retried: usize,
    /// Requests still failed after their retries.
    pub failed_after_retries: usize,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub detection: Option<Duration>,
    pub recovery: Option<Duration>,
    /// Which failures the scenario allows, and why.
    pub budget: String,
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
        "| Scenario | LB | Requests | Failed (1st attempt) | Retried | Failed after retries | p50 ms | p95 ms | p99 ms | Detection | Recovery | Failure budget | Verdict | Notes |\n\
         | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |\n",
    );
    for r in rows {
        let verdict = if r.passed() {
            "PASS".to_owned()
        } else {
            format!("FAIL: {}", r.problems.join("; "))
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {} | {} |\n",
            r.scenario,
            r.balancer,
            r.requests,
            r.failed,
            r.retried,
            r.failed_after_retries,
            r.p50_ms,
            r.p95_ms,
            r.p99_ms,
            secs(r.detection),
            secs(r.recovery),
            r.budget,
            verdict,
            r.notes
        ));
    }
    out
}
