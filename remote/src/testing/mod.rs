//! Test support: Debian's `docker-registry` on a free port of 127.0.0.1, optionally with
//! htpasswd basic auth or bearer tokens from a token service of the tests' own ([`token`]), its
//! log kept (to count PUTs) and its storage folder reachable (to tamper with a blob). Stopped
//! and removed on drop.

mod token;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use cache::Digest;

use crate::RemoteUrl;

/// The registry binary (Debian's `docker-registry` package).
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
/// The repository of [`TestRegistry::url`].
pub const DEFAULT_REPO: &str = "engine/cache";

/// Whether the registry binary is there: `false` (after printing SKIP) when it is not, a panic
/// when `CI` is set (CI must run these tests).
pub fn require() -> bool {
    if Path::new(REGISTRY_BIN).is_file() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{REGISTRY_BIN} is missing (install Debian's docker-registry package)");
    }
    // Test support only (the `testing` feature, never in the engine binary): the test
    // harness shows this line, as the project's tests print SKIP when a service is missing.
    let _ = writeln!(std::io::stderr(), "SKIP: {REGISTRY_BIN} is missing");
    false
}

/// A running registry, killed on drop.
pub struct TestRegistry {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    token: Option<token::TokenService>,
}

/// How the registry authenticates clients.
enum Auth<'a> {
    None,
    /// htpasswd basic auth.
    Basic(&'a str, &'a str),
    /// Bearer tokens from a token service that knows these credentials.
    Token(&'a str, &'a str),
}

impl TestRegistry {
    /// A registry without auth, or `None` (SKIP) without the binary.
    pub fn start() -> Option<TestRegistry> {
        Self::launch(Auth::None)
    }

    /// A registry with htpasswd basic auth for `user`/`password`.
    pub fn start_with_auth(user: &str, password: &str) -> Option<TestRegistry> {
        Self::launch(Auth::Basic(user, password))
    }

    /// A registry that takes only bearer tokens, from a token service that gives `user` /
    /// `password` what they ask for and anonymous clients nothing (see [`token`]).
    pub fn start_with_token(user: &str, password: &str) -> Option<TestRegistry> {
        Self::launch(Auth::Token(user, password))
    }

    fn launch(auth: Auth<'_>) -> Option<TestRegistry> {
        if !require() {
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("storage")).expect("storage dir");
        let mut token = None;
        match auth {
            Auth::None => {}
            Auth::Basic(user, password) => {
                let hash = bcrypt::hash(password, 5).expect("bcrypt");
                std::fs::write(dir.path().join("htpasswd"), format!("{user}:{hash}\n")).expect("htpasswd");
            }
            Auth::Token(user, password) => {
                token::make_key(dir.path());
                token = Some(token::TokenService::start(dir.path(), user, password));
            }
        }
        let mut reg = TestRegistry { dir, port: 0, child: None, token };
        let mut last = String::new();
        for _ in 0..10 {
            reg.port = free_port();
            reg.write_config(matches!(auth, Auth::Basic(..)));
            match reg.spawn() {
                Ok(()) => return Some(reg),
                Err(why) => last = why,
            }
        }
        panic!("the test registry did not start: {last}");
    }

    fn write_config(&self, htpasswd: bool) {
        let root = self.dir.path();
        let mut yaml = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{}\n  secret: engine-test-secret\n",
            root.join("storage").display(),
            self.port
        );
        if htpasswd {
            yaml.push_str(&format!("auth:\n  htpasswd:\n    realm: engine-test\n    path: {}\n", root.join("htpasswd").display()));
        }
        if let Some(token) = &self.token {
            yaml.push_str(&format!(
                "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                token.realm(),
                token::SERVICE,
                token::ISSUER,
                root.join("token.crt").display()
            ));
        }
        std::fs::write(root.join("config.yml"), yaml).expect("registry config");
    }

    /// Start the process and wait (with a deadline) until `GET /v2/` answers.
    fn spawn(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path()).map_err(|e| e.to_string())?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let mut child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(self.dir.path().join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("{REGISTRY_BIN}: {e}"))?;
        // Ours is up when its log says it listens (another process may hold the port) and it answers.
        let listening = |log: &str| log.matches(&format!("listening on 127.0.0.1:{}", self.port)).count();
        let before = listening(&self.log());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("exited with {status} (port {} in use?)", self.port));
            }
            if listening(&self.log()) > before && answers(self.port) {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err("no answer on /v2/ within 30s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn registry(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `oci://127.0.0.1:PORT/engine/cache`.
    pub fn url(&self) -> RemoteUrl {
        self.url_with_repo(DEFAULT_REPO)
    }

    /// `oci://127.0.0.1:PORT/<repo>`.
    pub fn url_with_repo(&self, repo: &str) -> RemoteUrl {
        format!("oci://{}/{repo}", self.registry()).parse().expect("a valid test URL")
    }

    /// The registry's log (its stdout and stderr, access log included).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    /// The log's text.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Every request the access log shows, in order: (method, path with query).
    pub fn requests(&self) -> Vec<(String, String)> {
        self.log()
            .lines()
            .filter_map(|l| {
                // `127.0.0.1 - - [date] "METHOD PATH HTTP/1.1" status …`
                let quoted = l.split('"').nth(1)?;
                let mut parts = quoted.split(' ');
                let (method, path, proto) = (parts.next()?, parts.next()?, parts.next()?);
                proto.starts_with("HTTP/").then(|| (method.to_string(), path.to_string()))
            })
            .collect()
    }

    /// How many requests of `method` whose path contains `path_contains` the access log shows.
    pub fn count_requests(&self, method: &str, path_contains: &str) -> usize {
        self.requests().iter().filter(|(m, p)| m == method && p.contains(path_contains)).count()
    }

    /// Each request to the token service so far (`user`, `anonymous` or `refused`, then the
    /// query); empty without one.
    pub fn token_requests(&self) -> Vec<String> {
        self.token.as_ref().map(token::TokenService::requests).unwrap_or_default()
    }

    /// The registry's storage folder.
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// The file holding the blob `digest` in the registry's storage (to tamper with).
    pub fn blob_data_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.storage_dir().join("docker/registry/v2/blobs/sha256").join(&hex[..2]).join(&hex).join("data")
    }

    /// Stop the process (the storage stays).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start it again on the same port with the same storage.
    pub fn start_again(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(why) if Instant::now() > deadline => panic!("the test registry did not start again: {why}"),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Write `<dir>/config.json` with `auths` credentials for this registry; returns `dir`.
    pub fn docker_config_with(&self, dir: &Path, user: &str, password: &str) -> PathBuf {
        std::fs::create_dir_all(dir).expect("docker config dir");
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let json = serde_json::json!({ "auths": { self.registry(): { "auth": auth } } });
        std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&json).expect("json")).expect("config.json");
        dir.to_path_buf()
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port nobody listens on right now (bound, then released: the spawn retries on a clash).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// Whether an HTTP server answers `GET /v2/` on `port` (any status: 200, or 401 with auth).
fn answers(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.")
}
