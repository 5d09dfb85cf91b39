//! Test support: Debian's `nats-server` with JetStream on a free port of 127.0.0.1, its storage
//! in a temp folder. Killed on drop.

use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::ClusterUrl;

/// The server binary (Debian's `nats-server` package).
pub const NATS_BIN: &str = "/usr/sbin/nats-server";

/// Whether the binary is there: `false` (after printing SKIP) when it is not; a panic when `CI`
/// is set (CI must run these tests).
pub fn require() -> bool {
    if Path::new(NATS_BIN).is_file() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{NATS_BIN} is missing (install Debian's nats-server package)");
    }
    let _ = writeln!(std::io::stderr(), "SKIP: {NATS_BIN} is missing");
    false
}

/// A running single-node JetStream server.
pub struct NatsServer {
    _dir: tempfile::TempDir,
    port: u16,
    child: Child,
}

impl NatsServer {
    /// Start one, or `None` (SKIP) without the binary.
    pub fn start() -> Option<NatsServer> {
        if !require() {
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        for _ in 0..10 {
            let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port");
            let mut child = Command::new(NATS_BIN)
                .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
                .arg(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("nats-server starts");
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // the port was taken: another one
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Some(NatsServer { _dir: dir, port, child });
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("nats-server did not listen on 127.0.0.1:{port} within 20s");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("nats-server did not start on any of 10 ports");
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> ClusterUrl {
        format!("nats://127.0.0.1:{}", self.port).parse().expect("a valid test address")
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
