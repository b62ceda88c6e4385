//! Point-in-time recovery, proven: a private PostgreSQL archiving its WAL with pgBackRest
//! behind three replicas of the release binary, restored to a noted time by the shipped
//! `infra/scripts/restore.sh`. Needs `cargo build --release` first and `pgbackrest` on
//! the PATH (scripts/test-all.sh installs both). About 30 s.

use cartae_harness::scenarios::pitr::drill;
use cartae_harness::scenarios::run::DrillRun;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_to_a_timestamp_brings_back_exactly_the_writes_before_it() {
    let run = DrillRun::begin("test-pitr").await;
    let row = drill(&run.dir).await.expect("the PITR drill runs");
    run.finish(&[row], &[], ());
}
