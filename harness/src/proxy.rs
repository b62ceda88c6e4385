//! A TCP proxy the test controls, put between the service and a real PostgreSQL or Redis.
//!
//! It can cut the dependency (close every connection and refuse new ones), make it hang
//! (accept but forward nothing), add latency to every answer, and count connections and,
//! for PostgreSQL, the queries that cross it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Forward,
    /// Existing connections are closed, new ones are accepted and closed at once.
    Cut,
    /// Connections stay open but nothing is forwarded: a dependency that hangs.
    Hang,
}

struct Control {
    mode: watch::Sender<Mode>,
    latency_ms: AtomicU64,
    connections: AtomicU64,
    queries: AtomicU64,
    count_pg_queries: bool,
}

pub struct TcpProxy {
    pub addr: SocketAddr,
    control: Arc<Control>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.control.mode.send_replace(Mode::Cut);
    }
}

impl TcpProxy {
    /// Starts a proxy on a free loopback port. With `count_pg_queries`, the client's
    /// PostgreSQL messages are parsed to count simple queries (`Q`) and executes (`E`).
    pub async fn start(upstream: SocketAddr, count_pg_queries: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("bound address");
        let control = Arc::new(Control {
            mode: watch::channel(Mode::Forward).0,
            latency_ms: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            queries: AtomicU64::new(0),
            count_pg_queries,
        });
        let task = tokio::spawn(accept_loop(listener, upstream, control.clone()));
        Self {
            addr,
            control,
            task,
        }
    }

    pub fn set_mode(&self, mode: Mode) {
        self.control.mode.send_replace(mode);
    }

    pub fn set_latency(&self, latency: Duration) {
        self.control
            .latency_ms
            .store(latency.as_millis() as u64, Ordering::SeqCst);
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.control.connections.load(Ordering::SeqCst)
    }

    /// PostgreSQL queries (simple `Q` plus extended `E`) forwarded so far.
    pub fn queries(&self) -> u64 {
        self.control.queries.load(Ordering::SeqCst)
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, control: Arc<Control>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        control.connections.fetch_add(1, Ordering::SeqCst);
        let control = control.clone();
        tokio::spawn(async move {
            if *control.mode.borrow() == Mode::Cut {
                return;
            }
            let Ok(server) = TcpStream::connect(upstream).await else {
                return;
            };
            pump_pair(client, server, control).await;
        });
    }
}

async fn pump_pair(client: TcpStream, server: TcpStream, control: Arc<Control>) {
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let counter = control.count_pg_queries.then(PgCounter::default);
    tokio::select! {
        _ = pump(client_read, server_write, control.clone(), false, counter) => {}
        _ = pump(server_read, client_write, control.clone(), true, None) => {}
    }
}

/// Waits while the proxy hangs. True when forwarding, false when cut (or dropped).
async fn until_forwarding(mode: &mut watch::Receiver<Mode>) -> bool {
    loop {
        let current = *mode.borrow_and_update();
        match current {
            Mode::Forward => return true,
            Mode::Cut => return false,
            Mode::Hang => {
                if mode.changed().await.is_err() {
                    return false;
                }
            }
        }
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    control: Arc<Control>,
    delayed: bool,
    mut counter: Option<PgCounter>,
) {
    let mut mode = control.mode.subscribe();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if !until_forwarding(&mut mode).await {
            return;
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => match read { Ok(0) | Err(_) => return, Ok(n) => n },
            changed = mode.changed() => { if changed.is_err() { return } continue }
        };
        if let Some(counter) = counter.as_mut() {
            let queries = counter.feed(&buf[..n]);
            control.queries.fetch_add(queries, Ordering::SeqCst);
        }
        let latency = control.latency_ms.load(Ordering::SeqCst);
        if delayed && latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        // Data read before a hang goes out when it ends; a cut drops it.
        if !until_forwarding(&mut mode).await {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Parses the frontend side of the PostgreSQL protocol just enough to count queries.
#[derive(Default)]
struct PgCounter {
    buf: Vec<u8>,
    typed: bool,
}

impl PgCounter {
    fn feed(&mut self, data: &[u8]) -> u64 {
        self.buf.extend_from_slice(data);
        let mut queries = 0;
        loop {
            if self.typed {
                if self.buf.len() < 5 {
                    break;
                }
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize;
                if self.buf.len() < 1 + len {
                    break;
                }
                if matches!(self.buf[0], b'Q' | b'E') {
                    queries += 1;
                }
                self.buf.drain(..1 + len);
            } else {
                if self.buf.len() < 8 {
                    break;
                }
                let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]])
                    as usize;
                let code = u32::from_be_bytes([self.buf[4], self.buf[5], self.buf[6], self.buf[7]]);
                if self.buf.len() < len {
                    break;
                }
                // SSLRequest and GSSENCRequest are followed by another untyped message;
                // the startup message (protocol 3.0) is followed by typed ones.
                if code == 196_608 {
                    self.typed = true;
                }
                self.buf.drain(..len);
            }
        }
        queries
    }
}
