//! Point-in-time recovery, proven: a private PostgreSQL archiving its WAL with pgBackRest
//! behind three replicas of the release binary, restored to a noted time by the shipped
//! `infra/scripts/restore.sh`. Needs `cargo build --release` first and `pgbackrest` on
//! the PATH (scripts/test-all.sh installs both). About 30 s.

use cartae_harness::pitr::drill;
use cartae_harness::report::table;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_to_a_timestamp_brings_back_exactly_the_writes_before_it() {
    let dir = cartae_harness::repo_root()
        .join("ha-logs")
        .join(format!("test-pitr-{}", uuid::Uuid::new_v4().simple()));
    let row = drill(&dir).await.expect("the PITR drill runs");
    let rows = [row];
    println!("{}", table(&rows));
    assert!(
        rows[0].passed(),
        "PITR drill failed (logs in {}):\n{}",
        dir.display(),
        table(&rows)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
