//! QUIC network adapter for raftkit (quinn, mutual TLS). Filled in by a later issue.
