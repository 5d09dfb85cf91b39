//! Credentials the way Docker keeps them: `config.json` (`$DOCKER_CONFIG`, the configured
//! folder, else `~/.docker`): `credHelpers.<registry>`, `credsStore`, then `auths.<registry>`
//! (`auth` = base64 of `user:password`, or `username`/`password`, or `identitytoken`). A helper
//! is `docker-credential-<name> get`, given the server on stdin, bounded in output and time.
//! `config.json` is untrusted input: bounded in size, a regular file (a symlink only if it stays
//! in its folder). No credential ever reaches a message: errors name the file and the field.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::Deserialize;

/// Bound on `config.json` and on a helper's output.
const MAX_CONFIG: u64 = 1 << 20;
/// Bound on a credential helper's run.
const HELPER_TIMEOUT: Duration = Duration::from_secs(10);

/// What authenticates us to one registry. `Debug` shows no secret.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Credentials {
    /// User name and password (basic auth, or exchanged for a bearer token).
    Basic { username: String, password: String },
    /// An identity (refresh) token.
    IdentityToken { username: String, token: String },
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Basic { username, .. } => f.debug_struct("Basic").field("username", username).finish_non_exhaustive(),
            Credentials::IdentityToken { .. } => f.debug_struct("IdentityToken").finish_non_exhaustive(),
        }
    }
}

#[derive(Deserialize, Default)]
struct ConfigFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

#[derive(Deserialize)]
struct HelperAnswer {
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret", default)]
    secret: String,
}

/// The folder of `config.json`: the configured one, `$DOCKER_CONFIG`, else `~/.docker`.
pub(crate) fn config_dir(configured: Option<&Path>) -> Option<PathBuf> {
    if let Some(dir) = configured {
        return Some(dir.to_path_buf());
    }
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    std::env::var_os("HOME").filter(|h| !h.is_empty()).map(|h| PathBuf::from(h).join(".docker"))
}

/// The credentials for `registry` (`HOST[:PORT]`) from the config in `dir`, if any. `Err` says
/// what is wrong with the file or the helper (never a secret).
pub(crate) fn lookup(dir: Option<&Path>, registry: &str) -> Result<Option<Credentials>, String> {
    lookup_with(dir, registry, None, HELPER_TIMEOUT)
}

/// [`lookup`], with credential helpers taken from `helpers` instead of `PATH` (tests).
fn lookup_with(dir: Option<&Path>, registry: &str, helpers: Option<&Path>, timeout: Duration) -> Result<Option<Credentials>, String> {
    let Some(dir) = dir else { return Ok(None) };
    let path = dir.join("config.json");
    let Some(bytes) = read_config(dir, &path)? else { return Ok(None) };
    let config: ConfigFile = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{}: not a Docker config file (line {}, column {})", path.display(), e.line(), e.column()))?;
    let helper =
        config.cred_helpers.iter().find(|(k, _)| same_registry(k, registry)).map(|(_, v)| v.clone()).or(config.creds_store.clone());
    if let Some(helper) = helper.filter(|h| !h.is_empty()) {
        if let Some(found) = run_helper(&helper, registry, helpers, timeout)? {
            return Ok(Some(found));
        }
    }
    let Some(entry) = config.auths.iter().find(|(k, _)| same_registry(k, registry)).map(|(_, v)| v) else { return Ok(None) };
    from_entry(entry).map_err(|why| format!("{}: auths entry for {registry}: {why}", path.display()))
}

fn from_entry(entry: &AuthEntry) -> Result<Option<Credentials>, String> {
    if let Some(token) = entry.identitytoken.as_deref().filter(|t| !t.is_empty()) {
        return Ok(Some(Credentials::IdentityToken { username: entry.username.clone().unwrap_or_default(), token: token.to_string() }));
    }
    if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
        let decoded = base64::engine::general_purpose::STANDARD.decode(auth.trim()).map_err(|_| "`auth` is not base64".to_string())?;
        let text = String::from_utf8(decoded).map_err(|_| "`auth` is not UTF-8".to_string())?;
        let (username, password) = text.split_once(':').ok_or_else(|| "`auth` is not user:password".to_string())?;
        return Ok(Some(Credentials::Basic { username: username.to_string(), password: password.to_string() }));
    }
    match (&entry.username, &entry.password) {
        (Some(u), Some(p)) if !u.is_empty() => Ok(Some(Credentials::Basic { username: u.clone(), password: p.clone() })),
        _ => Ok(None),
    }
}

/// Whether a key of `auths`/`credHelpers` (`host:port`, `https://host:port/v1/`, …) names `registry`.
fn same_registry(key: &str, registry: &str) -> bool {
    let k = key.strip_prefix("https://").or_else(|| key.strip_prefix("http://")).unwrap_or(key);
    let k = k.split('/').next().unwrap_or(k);
    k.eq_ignore_ascii_case(registry)
}

/// The bytes of `config.json`, or `None` when there is none. Bounded; a regular file; a symlink
/// only when its target stays inside `dir`.
fn read_config(dir: &Path, path: &Path) -> Result<Option<Vec<u8>>, String> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let real = if meta.file_type().is_symlink() {
        let target = std::fs::canonicalize(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let base = std::fs::canonicalize(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        if !target.starts_with(&base) {
            return Err(format!("{}: a symlink out of its folder, not read", path.display()));
        }
        target
    } else {
        path.to_path_buf()
    };
    cache::safe::read_bounded(&real, MAX_CONFIG).map(Some).map_err(|e| format!("{}: {e}", path.display()))
}

/// `docker-credential-<helper> get` for `registry`; `None` when it has no credentials.
fn run_helper(helper: &str, registry: &str, helpers: Option<&Path>, timeout: Duration) -> Result<Option<Credentials>, String> {
    if !helper.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
        return Err(format!("invalid credential helper name `{}`", helper.escape_debug()));
    }
    let program = format!("docker-credential-{helper}");
    let path = helpers.map(|d| d.join(&program)).unwrap_or_else(|| PathBuf::from(&program));
    let mut child = match Command::new(&path).arg("get").stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(format!("credential helper {program} is not installed")),
        Err(e) => return Err(format!("credential helper {program}: {e}")),
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(registry.as_bytes());
    }
    let stdout = child.stdout.take();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        if let Some(s) = stdout {
            let _ = s.take(MAX_CONFIG + 1).read_to_end(&mut out);
        }
        out
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("credential helper {program} did not answer within {:.1}s", timeout.as_secs_f64()));
            }
            Err(e) => return Err(format!("credential helper {program}: {e}")),
        }
    };
    let out = reader.join().unwrap_or_default();
    if !status.success() {
        // "credentials not found in native keychain": no credentials, not an error.
        return Ok(None);
    }
    if out.len() as u64 > MAX_CONFIG {
        return Err(format!("credential helper {program}: answer too large"));
    }
    let answer: HelperAnswer =
        serde_json::from_slice(&out).map_err(|_| format!("credential helper {program}: not a credentials answer"))?;
    if answer.secret.is_empty() {
        return Ok(None);
    }
    Ok(Some(if answer.username == "<token>" {
        Credentials::IdentityToken { username: String::new(), token: answer.secret }
    } else {
        Credentials::Basic { username: answer.username, password: answer.secret }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, json: &str) {
        std::fs::write(dir.join("config.json"), json).unwrap();
    }

    #[test]
    fn auths_entries_give_basic_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let auth = base64::engine::general_purpose::STANDARD.encode("me:s3cret");
        write(
            dir.path(),
            &format!(r#"{{"auths":{{"https://r.io:5000/v1/":{{"auth":"{auth}"}},"other.io":{{"username":"u","password":"p"}}}}}}"#),
        );
        let found = lookup(Some(dir.path()), "r.io:5000").unwrap().unwrap();
        assert_eq!(found, Credentials::Basic { username: "me".into(), password: "s3cret".into() });
        assert!(!format!("{found:?}").contains("s3cret"));
        assert_eq!(
            lookup(Some(dir.path()), "other.io").unwrap().unwrap(),
            Credentials::Basic { username: "u".into(), password: "p".into() }
        );
        assert_eq!(lookup(Some(dir.path()), "third.io").unwrap(), None);
    }

    #[test]
    fn hostile_config_files_are_errors_without_secrets() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(lookup(Some(dir.path()), "r.io").unwrap(), None, "no file: anonymous");
        write(dir.path(), r#"{"auths":{"r.io":{"auth":"!!notbase64 s3cret"}}}"#);
        let err = lookup(Some(dir.path()), "r.io").unwrap_err();
        assert!(err.contains("base64") && !err.contains("s3cret"), "{err}");
        write(dir.path(), r#"{"auths": s3cret"#);
        let err = lookup(Some(dir.path()), "r.io").unwrap_err();
        assert!(!err.contains("s3cret"), "{err}");
        std::fs::write(dir.path().join("config.json"), vec![b' '; (MAX_CONFIG + 1) as usize]).unwrap();
        assert!(lookup(Some(dir.path()), "r.io").unwrap_err().contains("larger"));
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("c.json"), "{}").unwrap();
        std::fs::remove_file(dir.path().join("config.json")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("c.json"), dir.path().join("config.json")).unwrap();
        assert!(lookup(Some(dir.path()), "r.io").unwrap_err().contains("symlink"));
        std::fs::remove_file(dir.path().join("config.json")).unwrap();
        rustix_free_mkfifo(&dir.path().join("config.json"));
        assert!(lookup(Some(dir.path()), "r.io").is_err(), "a FIFO is refused, never read");
        write_helper_config(dir.path());
        assert!(lookup(Some(dir.path()), "r.io").unwrap_err().contains("invalid credential helper"));
    }

    #[test]
    fn credential_helpers_are_asked_first_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let script = |name: &str, body: &str| {
            let p = bin.join(format!("docker-credential-{name}"));
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        };
        // The helper echoes the server it was asked about back as the user name.
        script("echo", r#"read server; printf '{"ServerURL":"%s","Username":"%s","Secret":"helper-s3cret"}' "$server" "$server""#);
        script("none", "echo 'credentials not found in native keychain'; exit 1");
        script("token", r#"read s; printf '{"Username":"<token>","Secret":"tok"}'"#);
        script("slow", "sleep 30");
        let auth = base64::engine::general_purpose::STANDARD.encode("inline:pw");
        let lookup = |json: &str, registry: &str| {
            write(dir.path(), json);
            lookup_with(Some(dir.path()), registry, Some(&bin), Duration::from_secs(2))
        };
        let found = lookup(&format!(r#"{{"credHelpers":{{"r.io":"echo"}},"auths":{{"r.io":{{"auth":"{auth}"}}}}}}"#), "r.io").unwrap();
        assert_eq!(found, Some(Credentials::Basic { username: "r.io".into(), password: "helper-s3cret".into() }));
        // credHelpers names another registry: the store, which has nothing; then auths.
        let found =
            lookup(&format!(r#"{{"credsStore":"none","credHelpers":{{"x.io":"echo"}},"auths":{{"r.io":{{"auth":"{auth}"}}}}}}"#), "r.io")
                .unwrap();
        assert_eq!(found, Some(Credentials::Basic { username: "inline".into(), password: "pw".into() }));
        let found = lookup(r#"{"credsStore":"token"}"#, "r.io").unwrap();
        assert_eq!(found, Some(Credentials::IdentityToken { username: String::new(), token: "tok".into() }));
        let err = lookup(r#"{"credsStore":"missing"}"#, "r.io").unwrap_err();
        assert!(err.contains("not installed"), "{err}");
        let started = Instant::now();
        let err = lookup(r#"{"credsStore":"slow"}"#, "r.io").unwrap_err();
        assert!(err.contains("did not answer") && started.elapsed() < Duration::from_secs(5), "{err}");
    }

    fn rustix_free_mkfifo(path: &Path) {
        let status = Command::new("mkfifo").arg(path).status().unwrap();
        assert!(status.success());
    }

    fn write_helper_config(dir: &Path) {
        let _ = std::fs::remove_file(dir.join("config.json"));
        write(dir, r#"{"credsStore":"../../bin/sh"}"#);
    }
}
