//! A token service for [`super::TestRegistry::start_with_token`]: the bearer-token flow of the
//! distribution spec, as Docker Hub, GHCR and Harbor run it. The registry answers `401` with a
//! `Bearer realm=…,service=…` challenge; a client asks this service for a token (with basic
//! credentials, or none) and sends it to the registry, which checks its signature against the
//! certificate this service signs with (made by `openssl` here).
//!
//! Tokens are ES256 JWTs whose header carries the certificate (`x5c`). The right credentials get
//! every action they ask for; no credentials get a token granting nothing; wrong ones get `401`.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;

/// The `service` the registry names in its challenge and expects as the token's audience.
pub const SERVICE: &str = "engine-test-registry";
/// The token's issuer, as the registry is configured to expect.
pub const ISSUER: &str = "engine-test-token-service";

/// Longest request head read.
const MAX_HEAD: u64 = 16 << 10;

pub(super) struct TokenService {
    port: u16,
    stop: Arc<AtomicBool>,
    requests: Arc<Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Make a P-256 key and a self-signed certificate for it in `dir` with `openssl`:
/// `token.key` (PKCS#8 PEM) and `token.crt` (PEM, the registry's root bundle).
pub(super) fn make_key(dir: &Path) {
    let status = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=engine-test-token-service", "-keyout"])
        .arg(dir.join("token.key"))
        .arg("-out")
        .arg(dir.join("token.crt"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl (Debian's openssl package) makes the token service's certificate");
    assert!(status.success(), "openssl could not make the token service's certificate");
}

impl TokenService {
    /// Serve tokens on a free port of 127.0.0.1, signed with the key `make_key` left in `dir`,
    /// for `user` / `password`.
    pub(super) fn start(dir: &Path, user: &str, password: &str) -> TokenService {
        let key = std::fs::read(dir.join("token.key")).expect("token key");
        let key = jsonwebtoken::EncodingKey::from_ec_pem(&key).expect("a P-256 PKCS#8 key");
        // A PEM body is the base64 of the DER: what `x5c` carries.
        let cert = std::fs::read_to_string(dir.join("token.crt")).expect("token certificate");
        let der: String = cert.lines().filter(|l| !l.starts_with("-----")).collect();
        let listener = TcpListener::bind("127.0.0.1:0").expect("a port for the token service");
        let port = listener.local_addr().expect("its address").port();
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")));
        let issuer = Issuer { key, der, user: user.to_string(), basic, serial: AtomicU64::new(0) };
        let (stop2, requests2) = (stop.clone(), requests.clone());
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                // One request per connection, answered in order: a test's clients are few.
                let _ = issuer.answer(stream, &requests2);
            }
        });
        TokenService { port, stop, requests, thread: Some(thread) }
    }

    /// The realm the registry sends clients to.
    pub(super) fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    /// Each token request so far: `<who> <query>`, `who` being `user`, `anonymous` or `refused`.
    pub(super) fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for TokenService {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Issuer {
    key: jsonwebtoken::EncodingKey,
    der: String,
    user: String,
    basic: String,
    serial: AtomicU64,
}

impl Issuer {
    fn answer(&self, stream: TcpStream, log: &Mutex<Vec<String>>) -> std::io::Result<()> {
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut reader = BufReader::new(std::io::Read::take(stream.try_clone()?, MAX_HEAD));
        let mut first = String::new();
        reader.read_line(&mut first)?;
        let mut authorization = None;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("authorization") {
                    authorization = Some(value.trim().to_string());
                }
            }
        }
        let target = first.split(' ').nth(1).unwrap_or("");
        let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
        let (who, status, body) = match authorization.as_deref() {
            Some(a) if a == self.basic => ("user", "200 OK", self.token(&self.user, &scopes(target))),
            Some(_) => ("refused", "401 Unauthorized", r#"{"errors":[{"code":"UNAUTHORIZED"}]}"#.to_string()),
            None => ("anonymous", "200 OK", self.token("", &[])),
        };
        log.lock().unwrap_or_else(|p| p.into_inner()).push(format!("{who} {query}"));
        let mut stream = stream;
        write!(
            stream,
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    /// A token for `subject` granting `access` (type, name, actions).
    fn token(&self, subject: &str, access: &[(String, String, Vec<String>)]) -> String {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("time after 1970").as_secs();
        let access: Vec<serde_json::Value> =
            access.iter().map(|(t, name, actions)| serde_json::json!({ "type": t, "name": name, "actions": actions })).collect();
        let claims = serde_json::json!({
            "iss": ISSUER, "sub": subject, "aud": SERVICE,
            "exp": now + 300, "nbf": now - 10, "iat": now,
            "jti": format!("engine-test-{}", self.serial.fetch_add(1, Ordering::SeqCst)),
            "access": access,
        });
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.x5c = Some(vec![self.der.clone()]);
        let token = jsonwebtoken::encode(&header, &claims, &self.key).expect("a token");
        serde_json::json!({ "token": token, "access_token": token, "expires_in": 300 }).to_string()
    }
}

/// The `scope` parameters of the request `target` (`TYPE:NAME:ACTIONS`).
fn scopes(target: &str) -> Vec<(String, String, Vec<String>)> {
    let Ok(url) = reqwest::Url::parse(&format!("http://token{target}")) else { return Vec::new() };
    url.query_pairs()
        .filter(|(k, _)| k == "scope")
        .filter_map(|(_, s)| {
            let mut parts = s.rsplitn(2, ':');
            let actions = parts.next()?.split(',').map(str::to_string).collect();
            let (kind, name) = parts.next()?.split_once(':')?;
            Some((kind.to_string(), name.to_string(), actions))
        })
        .collect()
}
