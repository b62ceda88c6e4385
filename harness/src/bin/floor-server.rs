//! The floor server on its own: `floor-server <port> <body>`. The bench binary runs the
//! same code as `bench --floor <port> <body>`, so that one `cargo run` builds everything.

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let port: u16 = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: floor-server <port> <body>"))?
        .parse()?;
    cartae_harness::floor::serve(port, args.next().unwrap_or_default())
}
