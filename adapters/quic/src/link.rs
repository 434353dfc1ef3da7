//! The rules that keep one connection per pair of nodes, and the reconnection backoff. Pure
//! functions, so the races they settle can be tested exhaustively.
//!
//! Either node may dial the other, and both may do so at once. Each node keeps at most one
//! *active* connection per peer and uses it in both directions. A node dials a peer only when
//! it has no active connection to it, so a dial tells the receiving side that the dialer holds
//! nothing else. When two live connections meet, both nodes must keep the same one:
//!
//! - a new connection from the peer replaces one the peer dialed earlier (the peer has
//!   evidently dropped that one);
//! - it replaces one we dialed if the peer's incarnation differs from the one seen on ours (the
//!   peer restarted, so ours leads to a dead process);
//! - otherwise both dials crossed: the connection dialed by the node with the smaller id wins,
//!   on both sides.

use std::time::Duration;

use raftkit::NodeId;

/// What a node holds for a peer when another connection to it completes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Existing {
    /// No connection, or only a closed one.
    Nothing,
    /// A live connection we dialed; the peer's incarnation if it has sent a stream header on it.
    DialedByUs { peer_incarnation: Option<u64> },
    /// A live connection the peer dialed.
    DialedByPeer,
}

/// What to do with the connection that just completed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Keep it, closing the existing one if any.
    Adopt,
    /// Close it and keep the existing one.
    Refuse,
}

/// A connection from `peer` (carrying its incarnation) has been authenticated by `me`.
pub(crate) fn on_incoming(
    me: NodeId,
    peer: NodeId,
    existing: Existing,
    incarnation: u64,
) -> Verdict {
    match existing {
        Existing::Nothing | Existing::DialedByPeer => Verdict::Adopt,
        Existing::DialedByUs { peer_incarnation: Some(seen) } if seen != incarnation => {
            Verdict::Adopt
        }
        Existing::DialedByUs { .. } => crossed(me, peer, false),
    }
}

/// A connection `me` dialed to `peer` has completed its handshake.
pub(crate) fn on_dialed(me: NodeId, peer: NodeId, existing: Existing) -> Verdict {
    match existing {
        // We dial only with nothing active, so "ours" is a leftover the dial supersedes.
        Existing::Nothing | Existing::DialedByUs { .. } => Verdict::Adopt,
        Existing::DialedByPeer => crossed(me, peer, true),
    }
}

/// Two dials crossed: keep the one dialed by the smaller id. `new_is_ours` says who dialed the
/// connection being decided.
fn crossed(me: NodeId, peer: NodeId, new_is_ours: bool) -> Verdict {
    let ours_wins = me < peer;
    if ours_wins == new_is_ours { Verdict::Adopt } else { Verdict::Refuse }
}

/// The wait after `failures` consecutive failed attempts (at least one): `min` doubled per
/// further failure, capped at `max`, then drawn from its upper half by `random`.
pub(crate) fn backoff(failures: u32, min: Duration, max: Duration, random: u64) -> Duration {
    let doublings = failures.saturating_sub(1).min(32);
    let full = min.saturating_mul(1u32 << doublings.min(31)).min(max);
    let half = full / 2;
    let span = (full - half).as_nanos() as u64;
    half + Duration::from_nanos(if span == 0 { 0 } else { random % (span + 1) })
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: NodeId = NodeId(1);
    const B: NodeId = NodeId(2);

    /// Both nodes dial at once; whichever order the handshakes complete in on each side, both
    /// keep the same connection: the one dialed by the smaller id.
    #[test]
    fn crossed_dials_settle_on_the_same_connection() {
        // Connection "a" dialed by A, "b" dialed by B.
        // On A: "a" completes as ours, "b" arrives as incoming (either order).
        // On B: "b" completes as ours, "a" arrives as incoming (either order).
        for a_first_on_a in [true, false] {
            for b_first_on_b in [true, false] {
                for seen in [None, Some(7)] {
                    let on_a = if a_first_on_a {
                        // "a" adopted, then "b" arrives.
                        let v =
                            on_incoming(A, B, Existing::DialedByUs { peer_incarnation: seen }, 7);
                        if v == Verdict::Adopt { 'b' } else { 'a' }
                    } else {
                        assert_eq!(on_incoming(A, B, Existing::Nothing, 7), Verdict::Adopt);
                        let v = on_dialed(A, B, Existing::DialedByPeer);
                        if v == Verdict::Adopt { 'a' } else { 'b' }
                    };
                    let on_b = if b_first_on_b {
                        let v =
                            on_incoming(B, A, Existing::DialedByUs { peer_incarnation: seen }, 7);
                        if v == Verdict::Adopt { 'a' } else { 'b' }
                    } else {
                        assert_eq!(on_incoming(B, A, Existing::Nothing, 7), Verdict::Adopt);
                        let v = on_dialed(B, A, Existing::DialedByPeer);
                        if v == Verdict::Adopt { 'b' } else { 'a' }
                    };
                    assert_eq!((on_a, on_b), ('a', 'a'), "{a_first_on_a} {b_first_on_b} {seen:?}");
                }
            }
        }
    }

    #[test]
    fn a_restarted_peer_replaces_our_stale_connection() {
        // A (smaller id) holds a connection it dialed to B's previous incarnation 5; B restarts
        // as incarnation 6 and dials. Without the incarnation rule A would refuse B until its
        // stale connection timed out.
        let v = on_incoming(A, B, Existing::DialedByUs { peer_incarnation: Some(5) }, 6);
        assert_eq!(v, Verdict::Adopt);
        // A peer that dialed again replaces its own earlier connection.
        assert_eq!(on_incoming(A, B, Existing::DialedByPeer, 5), Verdict::Adopt);
    }

    #[test]
    fn backoff_doubles_caps_and_jitters_in_the_upper_half() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(2));
        for r in [0, 1, 12345, u64::MAX] {
            let d1 = backoff(1, min, max, r);
            assert!(d1 >= min / 2 && d1 <= min, "{d1:?}");
            let d3 = backoff(3, min, max, r);
            assert!(d3 >= min * 2 && d3 <= min * 4, "{d3:?}");
            let d40 = backoff(40, min, max, r);
            assert!(d40 >= max / 2 && d40 <= max, "{d40:?}");
        }
        let mut j = raftkit::core::Rng::new(1);
        let draws: Vec<Duration> = (0..8).map(|_| backoff(5, min, max, j.next_u64())).collect();
        assert!(draws.windows(2).any(|w| w[0] != w[1]), "no jitter: {draws:?}");
    }
}
