//! raftkit examples: a replicated key-value service (`kv`), the README's `demo`, and one small
//! program per adapter combination (`mem_cluster`, `quic_redb`, `quic_rocksdb`). See
//! `examples/README.md` for which file shows what.
//!
//! The library holds what the programs share: choosing adapters at run time ([`node`]), the
//! HTTP/JSON client protocol ([`protocol`]), its server ([`api`]) and client ([`client`]),
//! running a node from command-line options ([`serve`]), and its metrics in Prometheus format
//! ([`prometheus`]).

pub mod api;
pub mod client;
pub mod node;
pub mod prometheus;
pub mod protocol;
pub mod serve;

/// Logs to stderr, at `RUST_LOG`'s level (default `warn`), in colour only when stderr is a
/// terminal (a log redirected to a file gets no ANSI escape codes).
pub fn init_logging() {
    use std::io::IsTerminal;

    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}
