//! The network suite: delivery, ordering, failure of unreachable peers, reconnection, large
//! messages and hostile frames. One `#[test]` per case through
//! [`network_suite!`](crate::network_suite). Runs on real time (transports do real IO).

use std::time::{Duration, Instant};

use bytes::Bytes;
use raftkit::{Entry, Heartbeat, Inbound, Inbox, LogId, LogIndex, Message, Network, NodeId, Term};
use raftkit_core::{AppendEntries, MessageBody};
use tokio::sync::mpsc;

use crate::harness::NetworkHarness;

/// A small, numbered message.
fn numbered(i: u64) -> Message {
    Message {
        term: Term(1),
        body: MessageBody::Heartbeat(Heartbeat { commit: LogIndex(i), round: 0 }),
    }
}

fn number(m: &Message) -> Option<u64> {
    match &m.body {
        MessageBody::Heartbeat(h) => Some(h.commit.0),
        _ => None,
    }
}

struct Endpoint<N> {
    net: N,
    rx: mpsc::Receiver<Inbound>,
}

async fn endpoint<H: NetworkHarness>(h: &H, c: &H::Cluster, id: NodeId) -> Endpoint<H::Network> {
    let net = h.endpoint(c, id).await;
    let (inbox, rx) = Inbox::channel(65_536);
    net.start(inbox).await.expect("start endpoint");
    Endpoint { net, rx }
}

async fn recv(rx: &mut mpsc::Receiver<Inbound>, within: Duration) -> Option<Inbound> {
    tokio::time::timeout(within, rx.recv()).await.ok().flatten()
}

/// Sends until one message arrives (transports may drop while connecting), up to `within`.
async fn send_until_delivered<N: Network>(
    from: &N,
    to: NodeId,
    rx: &mut mpsc::Receiver<Inbound>,
    within: Duration,
) -> Option<Inbound> {
    let start = Instant::now();
    let mut i = 1_000_000;
    while start.elapsed() < within {
        let _ = from.send(to, vec![numbered(i)]).await;
        if let Some(m) = recv(rx, Duration::from_millis(200)).await {
            return Some(m);
        }
        i += 1;
    }
    None
}

const PATIENCE: Duration = Duration::from_secs(10);

/// Messages go both ways between two endpoints, tagged with the sender's id.
pub async fn delivers_between_two_endpoints<H: NetworkHarness>(h: &H) {
    let ids = [NodeId(1), NodeId(2)];
    let c = h.cluster(&ids, 1).await;
    let a = endpoint(h, &c, ids[0]).await;
    let mut b = endpoint(h, &c, ids[1]).await;
    let first = send_until_delivered(&a.net, ids[1], &mut b.rx, PATIENCE).await.expect("1 -> 2");
    assert_eq!(first.from, ids[0], "the sender's id must be the authenticated one");
    a.net.send(ids[1], vec![numbered(1), numbered(2)]).await.expect("send");
    let mut got = Vec::new();
    while got.len() < 2 {
        let m = recv(&mut b.rx, PATIENCE).await.expect("messages 1 and 2 arrive");
        assert_eq!(m.from, ids[0]);
        if let Some(n) = number(&m.message).filter(|n| *n < 1_000_000) {
            got.push(n);
        }
    }
    got.sort_unstable();
    assert_eq!(got, [1, 2]);
    let mut a = a;
    let back = send_until_delivered(&b.net, ids[0], &mut a.rx, PATIENCE).await.expect("2 -> 1");
    assert_eq!(back.from, ids[1]);
    a.net.shutdown().await;
    b.net.shutdown().await;
}

/// Everything sent to a healthy peer arrives exactly once; for ordered transports, in order
/// per sender.
pub async fn per_peer_order_and_no_loss<H: NetworkHarness>(h: &H) {
    let ids = [NodeId(1), NodeId(2), NodeId(3)];
    let c = h.cluster(&ids, 2).await;
    let a = endpoint(h, &c, ids[0]).await;
    let b = endpoint(h, &c, ids[1]).await;
    let mut dst = endpoint(h, &c, ids[2]).await;
    send_until_delivered(&a.net, ids[2], &mut dst.rx, PATIENCE).await.expect("a connects");
    send_until_delivered(&b.net, ids[2], &mut dst.rx, PATIENCE).await.expect("b connects");
    let n = 600u64;
    for i in 0..n {
        // Singles and batches, interleaved between two senders.
        if i % 3 == 0 {
            a.net.send(ids[2], vec![numbered(i), numbered(n + i)]).await.expect("send batch");
        } else {
            a.net.send(ids[2], vec![numbered(i)]).await.expect("send");
            a.net.send(ids[2], vec![numbered(n + i)]).await.expect("send");
        }
        b.net.send(ids[2], vec![numbered(10 * n + i)]).await.expect("send");
    }
    let (mut from_a, mut from_b) = (Vec::new(), Vec::new());
    while from_a.len() < 2 * n as usize || from_b.len() < n as usize {
        let Some(m) = recv(&mut dst.rx, PATIENCE).await else {
            panic!("lost messages: got {} from 1 and {} from 2", from_a.len(), from_b.len())
        };
        match number(&m.message) {
            Some(k) if k >= 1_000_000 => continue, // connection probes
            Some(k) if m.from == ids[0] => from_a.push(k),
            Some(k) if m.from == ids[1] => from_b.push(k),
            other => panic!("unexpected message {other:?} from {}", m.from),
        }
    }
    let mut want_a: Vec<u64> = Vec::new();
    for i in 0..n {
        want_a.extend([i, n + i]);
    }
    let want_b: Vec<u64> = (0..n).map(|i| 10 * n + i).collect();
    if h.ordered() {
        assert_eq!(from_a, want_a, "messages from 1 reordered");
        assert_eq!(from_b, want_b, "messages from 2 reordered");
    } else {
        from_a.sort_unstable();
        want_a.sort_unstable();
        assert_eq!(from_a, want_a, "messages from 1 lost or duplicated");
        from_b.sort_unstable();
        assert_eq!(from_b, want_b, "messages from 2 lost or duplicated");
    }
    assert!(recv(&mut dst.rx, Duration::from_millis(200)).await.is_none(), "duplicates arrived");
}

/// A send to a peer that is down fails within the transport's bound, and does not hold up
/// traffic to other peers meanwhile.
pub async fn unreachable_peer_fails_fast_without_blocking_others<H: NetworkHarness>(h: &H) {
    let ids = [NodeId(1), NodeId(2), NodeId(3)];
    let c = h.cluster(&ids, 3).await;
    let a = std::sync::Arc::new(endpoint(h, &c, ids[0]).await.net);
    let mut b = endpoint(h, &c, ids[1]).await;
    // Node 3 never starts.
    let bound = h.unreachable_bound();
    let started = Instant::now();
    let dead = {
        let a = a.clone();
        tokio::spawn(async move {
            let r = a.send(NodeId(3), vec![numbered(7)]).await;
            (r, started.elapsed())
        })
    };
    let live = send_until_delivered(&*a, ids[1], &mut b.rx, PATIENCE).await;
    assert!(live.is_some(), "traffic to a live peer was blocked by a dead one");
    let (result, took) = tokio::time::timeout(bound + Duration::from_secs(2), dead)
        .await
        .expect("a send to a dead peer must finish within the transport's bound")
        .expect("send task");
    assert!(result.is_err(), "a send to a node that never started must fail");
    assert!(took <= bound + Duration::from_secs(1), "took {took:?}, bound {bound:?}");
}

/// After a peer restarts, messages reach its new endpoint.
pub async fn reconnects_after_peer_restart<H: NetworkHarness>(h: &H) {
    let ids = [NodeId(1), NodeId(2)];
    let c = h.cluster(&ids, 4).await;
    let a = endpoint(h, &c, ids[0]).await;
    let mut b = endpoint(h, &c, ids[1]).await;
    send_until_delivered(&a.net, ids[1], &mut b.rx, PATIENCE).await.expect("first delivery");
    b.net.shutdown().await;
    drop(b);
    // While it is down, sends fail or vanish, but must not hang forever.
    let r = tokio::time::timeout(
        h.unreachable_bound() + Duration::from_secs(2),
        a.net.send(ids[1], vec![numbered(5)]),
    )
    .await;
    assert!(r.is_ok(), "a send to a stopped peer hung");
    let mut b2 = endpoint(h, &c, ids[1]).await;
    let m =
        send_until_delivered(&a.net, ids[1], &mut b2.rx, PATIENCE + h.unreachable_bound()).await;
    assert!(m.is_some(), "no delivery after the peer restarted");
}

/// A 16 MiB message (snapshot-sized) arrives intact.
pub async fn large_message_arrives_intact<H: NetworkHarness>(h: &H) {
    let ids = [NodeId(1), NodeId(2)];
    let c = h.cluster(&ids, 5).await;
    let a = endpoint(h, &c, ids[0]).await;
    let mut b = endpoint(h, &c, ids[1]).await;
    send_until_delivered(&a.net, ids[1], &mut b.rx, PATIENCE).await.expect("connect");
    let data: Vec<u8> = (0..16usize << 20).map(|i| (i * 7 + i / 4096) as u8).collect();
    let big = Message {
        term: Term(3),
        body: MessageBody::AppendEntries(AppendEntries {
            prev_log_id: LogId::new(2, 9),
            entries: vec![Entry::normal(LogId::new(3, 10), Bytes::from(data))],
            leader_commit: LogIndex(9),
        }),
    };
    a.net.send(ids[1], vec![big.clone()]).await.expect("send 16 MiB");
    loop {
        let m = recv(&mut b.rx, Duration::from_secs(30)).await.expect("the large message arrives");
        if number(&m.message).is_some() {
            continue;
        }
        assert_eq!(m.message, big, "the large message was altered");
        break;
    }
}

async fn hostile_frame_is_refused<H: NetworkHarness>(h: &H, frame: Vec<u8>, what: &str) {
    let ids = [NodeId(1), NodeId(2)];
    let c = h.cluster(&ids, 6).await;
    let a = endpoint(h, &c, ids[0]).await;
    let mut b = endpoint(h, &c, ids[1]).await;
    send_until_delivered(&a.net, ids[1], &mut b.rx, PATIENCE).await.expect("connect");
    // The transport may report the refusal to the sender or not; either way nothing reaches
    // the engine.
    let _ = h.send_raw(&c, ids[0], ids[1], frame).await;
    if let Some(m) = recv(&mut b.rx, Duration::from_millis(500)).await {
        assert!(number(&m.message).is_some_and(|n| n >= 1_000_000), "{what} was delivered: {m:?}");
    }
    // Other traffic is unaffected.
    a.net.send(ids[1], vec![numbered(42)]).await.expect("send after a hostile frame");
    let deadline = Instant::now() + PATIENCE;
    loop {
        let m = recv(&mut b.rx, PATIENCE)
            .await
            .unwrap_or_else(|| panic!("traffic stopped after {what}"));
        if number(&m.message) == Some(42) {
            break;
        }
        assert!(Instant::now() < deadline, "traffic stopped after {what}");
    }
}

/// A frame that does not decode is dropped; other traffic continues.
pub async fn malformed_frame_is_refused<H: NetworkHarness>(h: &H) {
    let mut frame = vec![raftkit::codec::VERSION];
    frame.extend((0..64u8).map(|i| i.wrapping_mul(37) | 0x80));
    hostile_frame_is_refused(h, frame, "a malformed frame").await;
    hostile_frame_is_refused(h, vec![99, 1, 2, 3], "a frame of an unknown version").await;
}

/// A frame over the transport's limit is dropped; other traffic continues.
pub async fn oversized_frame_is_refused<H: NetworkHarness>(h: &H) {
    let size = h.max_frame_bytes() + 1;
    let mut frame = vec![0u8; size];
    frame[0] = raftkit::codec::VERSION;
    hostile_frame_is_refused(h, frame, "an oversized frame").await;
}

/// After `shutdown`, an endpoint delivers nothing more.
pub async fn shutdown_stops_delivery<H: NetworkHarness>(h: &H) {
    let ids = [NodeId(1), NodeId(2)];
    let c = h.cluster(&ids, 7).await;
    let a = endpoint(h, &c, ids[0]).await;
    let mut b = endpoint(h, &c, ids[1]).await;
    send_until_delivered(&a.net, ids[1], &mut b.rx, PATIENCE).await.expect("connect");
    b.net.shutdown().await;
    let _ = tokio::time::timeout(
        h.unreachable_bound() + Duration::from_secs(2),
        a.net.send(ids[1], vec![numbered(9)]),
    )
    .await;
    if let Some(m) = recv(&mut b.rx, Duration::from_millis(500)).await {
        panic!("delivered after shutdown: {m:?}");
    }
}

/// Runs a case on a fresh runtime.
pub fn run<F: std::future::Future>(f: F) -> F::Output {
    crate::log_store::block_on(f)
}

/// Expands to one `#[test]` per case of the network suite.
#[macro_export]
macro_rules! network_suite {
    ($harness:expr) => {
        $crate::__network_cases!(
            $harness;
            delivers_between_two_endpoints,
            per_peer_order_and_no_loss,
            unreachable_peer_fails_fast_without_blocking_others,
            reconnects_after_peer_restart,
            large_message_arrives_intact,
            malformed_frame_is_refused,
            oversized_frame_is_refused,
            shutdown_stops_delivery,
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __network_cases {
    ($harness:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                $crate::network::run($crate::network::$case(&$harness));
            }
        )*
    };
}
