//! Guards that every log line of a node's tasks carries the node's span (`raft{node=…}`), the
//! driver's lines within it the span of the node's current term and role
//! (`state{term=… role=…}`), and that elections are logged at `info` in them.
//! The lines are captured through `tracing-subscriber`'s formatter into a buffer.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::Cluster;
use raftkit_mem::KvCommand;
use tracing_subscriber::fmt::MakeWriter;

/// A `MakeWriter` appending every formatted line to a shared buffer.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Capture {
    type Writer = Capture;

    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

impl Capture {
    fn lines(&self) -> Vec<String> {
        String::from_utf8(self.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// The value of field `name` in the event part of a formatted line (after the span prefix).
fn event_field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let (_, event) = line.split_once("}: ")?;
    let at = event.find(&format!(" {name}="))? + name.len() + 2;
    event[at..].split(' ').next()
}

#[tokio::test(start_paused = true)]
async fn election_lines_carry_the_node_span_with_its_term_and_role() {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(capture.clone())
        .with_ansi(false)
        .without_time()
        .with_max_level(tracing::Level::DEBUG)
        .finish();
    // The runtime of this test runs every task on this thread, so a thread-local default
    // subscriber sees all of them.
    let _guard = tracing::subscriber::set_default(subscriber);

    let c = Cluster::start(3, 11).await;
    let leader = c.leader().await;
    c.write(KvCommand::put("k", "v")).await;
    let term = c.node(leader).unwrap().metrics().borrow().term;
    c.shutdown().await;

    let lines = capture.lines();
    let dump = || lines.join("\n");
    // The core's own line, logged inside the driver's task: it names the node in its fields,
    // and the span around it must name the same node.
    let won = lines
        .iter()
        .find(|l| l.contains("became leader") && event_field(l, "term") == Some(&term.to_string()))
        .unwrap_or_else(|| panic!("no 'became leader' line for term {term}:\n{}", dump()));
    assert_eq!(event_field(won, "node"), Some(leader.to_string().as_str()), "{won}");
    assert!(won.contains(&format!("raft{{node={leader}}}:")), "no node span on: {won}");

    // The driver's election lines, at info, in the span.
    let started = format!("campaign started term={term}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("raft{{node={leader}}}:")) && l.contains(&started)),
        "no 'campaign started' line of {leader} for term {term}:\n{}",
        dump()
    );
    // Once it leads, its lines are in the span of the new term and role: the leader's
    // shutdown line carries them.
    let stopping = lines
        .iter()
        .find(|l| l.contains(&format!("raft{{node={leader}}}:")) && l.contains("stopping"))
        .unwrap_or_else(|| panic!("no 'stopping' line of {leader}:\n{}", dump()));
    let state = format!("raft{{node={leader}}}:state{{term={term} role=leader}}: ");
    assert!(stopping.contains(&state), "{stopping}");
    // No line of the engine or the core is outside a node's span, whichever task logged it.
    let engine = |l: &&String| l.contains(" raftkit::") || l.contains(" raftkit_core::");
    let stray: Vec<&String> =
        lines.iter().filter(engine).filter(|l| !l.contains("raft{node=")).collect();
    assert!(stray.is_empty(), "lines outside a node span: {stray:#?}");
    assert!(lines.iter().filter(engine).count() > 10, "{}", dump());
    // Every node's lines are in its own span: each node's driver and helper tasks logged
    // their shutdown there.
    for id in &c.members {
        let prefix = format!("raft{{node={id}}}:");
        for what in
            ["stopping", "log writer stopped", "apply worker stopped", "snapshot receiver stopped"]
        {
            assert!(
                lines.iter().any(|l| l.contains(&prefix) && l.contains(what)),
                "no '{what}' line in the span of {id}:\n{}",
                dump()
            );
        }
    }
}
