//! The benchmark suite (the code is in `cartae_harness::bench`, a module per section):
//!
//!   cargo build --release && cargo run --release -p cartae-harness --bin bench
//!
//! prints the table and rewrites the generated section of `BENCHMARKS.md`. Options:
//! `--smoke` (a second or two per figure, no verdicts, writes `target/bench-smoke.md`;
//! CI runs it), `--out <file.md>`, `--only <section substring>`, `--compare <binary>` with
//! `--compare-label <text>` (the authenticated cache hit also measured with another build of
//! the service, in the same run).

use std::path::PathBuf;

use cartae_harness::bench::{run, Compare, Options};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--floor") {
        return cartae_harness::floor::main(&args[2..]);
    }
    let options = Options {
        smoke: flag("--smoke"),
        only: arg("--only"),
        out: arg("--out").map(PathBuf::from),
        compare: arg("--compare").map(|binary| Compare {
            binary: PathBuf::from(binary),
            label: arg("--compare-label").unwrap_or_else(|| "--compare binary".into()),
        }),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(options))
}
