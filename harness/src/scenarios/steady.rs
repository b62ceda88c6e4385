//! Steady state: three replicas share the load evenly, and nothing fails.

use super::shared::{judge, row};
use super::Drill;
use crate::load::LoadSpec;
use crate::report::Row;

pub(super) async fn run(d: &Drill) -> anyhow::Result<Row> {
    let before = d.metric_per_replica("request_distribution_total").await;
    let outcomes = d
        .load(LoadSpec {
            max_requests: 300,
            ..LoadSpec::default()
        })
        .finish()
        .await?;
    let after = d.metric_per_replica("request_distribution_total").await;
    let mut r = row("steady state", d, &outcomes);
    judge(&mut r, &outcomes, "none: nothing is wrong", |_| false);
    let served: Vec<f64> = before.iter().zip(&after).map(|(b, a)| a - b).collect();
    let mean = served.iter().sum::<f64>() / served.len() as f64;
    let worst = served
        .iter()
        .map(|s| (s - mean).abs() / mean.max(1.0))
        .fold(0.0, f64::max);
    r.notes = format!(
        "per replica: {} (max deviation {:.1} %)",
        served
            .iter()
            .map(|s| format!("{s:.0}"))
            .collect::<Vec<_>>()
            .join(" / "),
        worst * 100.0
    );
    if worst > 0.10 {
        r.problems
            .push(format!("distribution off by {:.1} %", worst * 100.0));
    }
    d.check_writes(&outcomes, &mut r.problems).await?;
    Ok(r)
}
