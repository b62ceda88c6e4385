//! The data tier, private to a test: servers on loopback ports chosen at run time, each
//! in a folder of its own, stopped by its PID on drop, which a test may kill.
//!
//! - [`server`]: what every one of them shares (folder, readiness wait, stop by signal).
//! - [`postgres`]: the one way to run a private PostgreSQL ([`postgres::PgServer`]), which
//!   the others build on.
//! - [`tls`]: a CA made at run time, and a PostgreSQL and a Redis that speak only TLS.
//! - [`archiving`]: a PostgreSQL archiving its WAL with pgBackRest, and its restores.
//! - [`patroni`]: etcd and two PostgreSQL nodes under Patroni, with synchronous
//!   replication, whose primary a drill can kill like a lost machine.
//! - [`sentinel`]: a Redis master, replica and three sentinels.

pub mod archiving;
pub mod patroni;
pub mod postgres;
pub mod sentinel;
pub mod server;
pub mod tls;
