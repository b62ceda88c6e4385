//! The floor servers on their own: `floor-server [live] <port> <body>`, `floor-server hit
//! <port> <redis-url> <key-prefix> <jwt-secret>`, `floor-server miss <port> <database-url>
//! <jwt-secret>` (see `cartae_harness::floor`). The bench binary runs the same code as
//! `bench --floor …`, so that one `cargo run` builds everything.

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    cartae_harness::floor::main(&args)
}
