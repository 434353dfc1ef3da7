//! A frame whose message is in a codec version this build does not read (as a peer running
//! another version of raftkit would send it) is refused — counted, its stream stopped, never
//! delivered as a message — and the refusal logged with the version named. The connection
//! survives.
//!
//! A file of its own: the test installs a process-wide subscriber to read the network's log.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{eventually, node, number, numbered, recv, until_delivered};
use raftkit::codec::VERSION;
use raftkit::{Network, NodeId};
use raftkit_quic::{AddressBook, CertAuthority};

/// Everything logged at `warn` and above, as text.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Log {
    fn capture() -> Log {
        let log = Log::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
        log
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_in_an_unknown_codec_version_is_refused_naming_the_version() {
    let log = Log::capture();
    let ca = CertAuthority::generate().unwrap();
    let book = AddressBook::new();
    let a = node(&ca, NodeId(1), &book).await;
    let mut b = node(&ca, NodeId(2), &book).await;
    until_delivered(&a.net, NodeId(2), &mut b.rx).await;
    let before = b.net.stats().frames_malformed;

    // Message 7, well formed but for its version byte.
    let unknown = VERSION + 1;
    let mut frame = raftkit::codec::encode_message(&numbered(7)).unwrap();
    assert_eq!(frame[0], VERSION);
    frame[0] = unknown;
    // The sender may or may not learn of the refusal (the peer's transport can acknowledge the
    // bytes before the peer reads them); the receiver's counter and log tell.
    let _ = a.net.send_raw_frame(NodeId(2), &frame).await;
    let counted =
        eventually(Duration::from_secs(10), || b.net.stats().frames_malformed == before + 1).await;
    assert!(counted, "the frame was not refused: {:?}", b.net.stats());
    let named = format!("unsupported format version {unknown}");
    let logged = eventually(Duration::from_secs(10), || log.text().contains(&named)).await;
    assert!(logged, "no refusal naming version {unknown} in the log:\n{}", log.text());

    // The connection carries on, and message 7 never arrived.
    a.net.send(NodeId(2), vec![numbered(8)]).await.unwrap();
    loop {
        let m = recv(&mut b.rx, Duration::from_secs(10)).await.expect("traffic continues");
        match number(&m.message) {
            Some(8) => break,
            Some(7) => panic!("the frame in codec version {unknown} was delivered"),
            _ => {}
        }
    }
    assert!(a.net.is_connected(NodeId(2)) && b.net.is_connected(NodeId(1)));
}
