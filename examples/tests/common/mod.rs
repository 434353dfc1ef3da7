//! What the `kv` end-to-end tests share: `kv node` processes on 127.0.0.1, the `kv` client
//! command, free ports, certificates and raw HTTP.

#![allow(dead_code)] // each test file uses some of these

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const KV: &str = env!("CARGO_BIN_EXE_kv");

/// A `kv node` process; killed (SIGKILL) when dropped.
pub struct NodeProcess {
    child: Child,
    /// The API address it printed.
    pub api: SocketAddr,
}

impl NodeProcess {
    /// Starts `kv node <args>` and waits for it to print its API address.
    pub fn start(args: &[String]) -> NodeProcess {
        let mut child = Command::new(KV)
            .arg("node")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start kv node");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let url = line.split("serving ").nth(1).unwrap_or_default();
                if let Some(addr) = url.strip_prefix("http://").or(url.strip_prefix("https://")) {
                    let _ = tx.send(addr.trim().to_string());
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("kv node {args:?} did not start"));
        NodeProcess { child, api: addr.parse().expect("API address") }
    }

    /// Stops the process with SIGTERM (a graceful shutdown) and checks that it exits cleanly.
    pub fn terminate(mut self) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status().expect("kill -TERM");
        assert!(status.success());
        let exit = self.child.wait().expect("wait for kv node");
        assert!(exit.success(), "kv node exited with {exit} after SIGTERM");
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a `kv` client command against `api`.
pub fn kv(api: &[SocketAddr], args: &[&str]) -> Output {
    let nodes: Vec<String> = api.iter().map(|a| a.to_string()).collect();
    Command::new(KV)
        .args(["--nodes", &nodes.join(","), "--timeout", "20s"])
        .args(args)
        .output()
        .expect("run kv")
}

pub fn stdout_of(api: &[SocketAddr], args: &[&str]) -> String {
    let out = kv(api, args);
    assert!(out.status.success(), "kv {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Reserves `n` distinct UDP ports on 127.0.0.1 by binding port 0, for the nodes' `--peers`
/// list (which must name every address before any node starts).
pub fn free_udp_ports(n: usize) -> Vec<u16> {
    let sockets: Vec<_> =
        (0..n).map(|_| std::net::UdpSocket::bind("127.0.0.1:0").expect("bind")).collect();
    sockets.iter().map(|s| s.local_addr().expect("addr").port()).collect()
}

pub fn node_args(id: u64, peers: &str, dir: &Path) -> Vec<String> {
    let d = |p: &str| dir.join(p).display().to_string();
    vec![
        "--id".into(),
        id.to_string(),
        "--peers".into(),
        peers.into(),
        "--api".into(),
        "127.0.0.1:0".into(),
        "--data-dir".into(),
        d("data"),
        "--certs-dir".into(),
        d(&format!("certs/node-{id}")),
    ]
}

/// Reserves `n` distinct TCP ports on 127.0.0.1 for the nodes' `--api` and `--peer-apis`.
pub fn free_tcp_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<_> =
        (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind")).collect();
    listeners.iter().map(|l| l.local_addr().expect("addr").port()).collect()
}

/// One raw HTTP/1.1 POST; returns the whole reply (status line, headers, body).
pub fn raw_post(api: SocketAddr, path: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect(api).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(request.as_bytes()).expect("send");
    let mut reply = String::new();
    tcp.read_to_string(&mut reply).expect("read");
    reply
}

pub fn make_certs(dir: &Path, nodes: &str) {
    let made = Command::new(KV)
        .args(["certs", "--dir", &dir.display().to_string(), "--nodes", nodes])
        .output()
        .expect("kv certs");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
}

pub fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// `GET <path>` on `api` over plain HTTP/1.1; returns the status code and the body.
pub fn http_get(api: SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(api).expect("connect to the API");
    conn.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(conn, "GET {path} HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\n\r\n").unwrap();
    let mut reply = String::new();
    conn.read_to_string(&mut reply).expect("read the reply");
    let (head, body) = reply.split_once("\r\n\r\n").expect("a complete HTTP reply");
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("a status");
    (status, body.to_string())
}
