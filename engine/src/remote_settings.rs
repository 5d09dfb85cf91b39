//! Which remote cache a command uses: `--remote-cache` (or `ENGINE_REMOTE_CACHE`),
//! `--remote-cache-mode`, `--remote-cache-insecure`, and the operator policy's `remote_cache:`.
//!
//! The policy speaks for the machine and wins: its URL is the default, and a run naming another
//! URL is refused; its mode is a cap (a run may ask for less, e.g. `read` under `readwrite`,
//! never more); its `insecure: false` refuses `--remote-cache-insecure`. Each refusal is an
//! invalid request (exit 2) naming the policy file and line.

use std::str::FromStr;
use std::time::Duration;

use remote::{Mode, RemoteConfig, RemoteUrl};

use crate::cli::RemoteCacheArgs;
use crate::session::StartError;

/// The bound on each registry request (a blob transfer gets this per MiB on top).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// The remote cache the command line and the policy ask for, `None` when neither names one.
pub fn resolve(args: &RemoteCacheArgs, policy: &dsl::policy::Policy) -> Result<Option<RemoteConfig>, StartError> {
    let pinned = policy.remote_cache().unwrap_or_default();
    let parse = |text: &str, at: Option<&str>| {
        RemoteUrl::from_str(text).map_err(|e| match at {
            Some(at) => StartError::Invalid(format!("{e} (remote_cache in the policy, {at})")),
            None => StartError::Invalid(e.to_string()),
        })
    };
    let policy_url = match &pinned.url {
        Some(u) => Some((parse(&u.value, Some(&u.at))?, u.at.clone())),
        None => None,
    };
    let asked_url = match args.remote_cache.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        Some(text) => Some(parse(text, None)?),
        None => None,
    };
    let url = match (asked_url, policy_url) {
        (None, None) => return Ok(None),
        (Some(url), None) => url,
        (None, Some((url, _))) => url,
        (Some(asked), Some((pinned, at))) if asked != pinned => {
            return Err(StartError::Invalid(format!(
                "--remote-cache {asked} is not allowed: the policy pins the remote cache to {pinned} ({at})"
            )))
        }
        (Some(asked), Some(_)) => asked,
    };
    let cap = match &pinned.mode {
        Some(m) => Some((Mode::from_str(&m.value).map_err(StartError::Invalid)?, m.at.clone())),
        None => None,
    };
    let mode = match (args.remote_cache_mode.as_deref().map(Mode::from_str).transpose().map_err(StartError::Invalid)?, &cap) {
        (Some(asked), Some((cap, at))) if !within(asked, *cap) => {
            return Err(StartError::Invalid(format!(
                "--remote-cache-mode {} is not allowed: the policy caps the remote cache at mode {} ({at})",
                asked.as_str(),
                cap.as_str()
            )))
        }
        (Some(asked), _) => asked,
        (None, Some((cap, _))) => *cap,
        (None, None) => Mode::ReadWrite,
    };
    let insecure = match &pinned.insecure {
        Some(p) if !p.value && args.remote_cache_insecure => {
            return Err(StartError::Invalid(format!(
                "--remote-cache-insecure is not allowed: the policy says `insecure: false` ({})",
                p.at
            )))
        }
        Some(p) => p.value || args.remote_cache_insecure,
        None => args.remote_cache_insecure,
    };
    Ok(Some(RemoteConfig { url, mode, insecure, docker_config: docker_config_dir(), timeout: REQUEST_TIMEOUT }))
}

/// Whether `asked` does nothing `cap` does not allow.
fn within(asked: Mode, cap: Mode) -> bool {
    (!asked.reads() || cap.reads()) && (!asked.writes() || cap.writes())
}

/// Docker's config folder: `$DOCKER_CONFIG`, else `~/.docker`.
pub fn docker_config_dir() -> Option<std::path::PathBuf> {
    match std::env::var_os("DOCKER_CONFIG").filter(|v| !v.is_empty()) {
        Some(dir) => Some(dir.into()),
        None => std::env::var_os("HOME").filter(|v| !v.is_empty()).map(|home| std::path::PathBuf::from(home).join(".docker")),
    }
}

/// The connection for `config` (no request yet): a configuration it cannot use (plain HTTP to a
/// host that is not loopback without `--remote-cache-insecure`, an unreadable `config.json`) is
/// an invalid request.
pub fn connect(config: RemoteConfig) -> Result<remote::Remote, StartError> {
    let url = config.url.to_string();
    remote::Remote::new(config).map_err(|e| StartError::Invalid(format!("remote cache {url}: {e}")))
}

/// [`resolve`] then [`connect`].
pub fn open(args: &RemoteCacheArgs, policy: &dsl::policy::Policy) -> Result<Option<remote::Remote>, StartError> {
    resolve(args, policy)?.map(connect).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn args(url: Option<&str>, mode: Option<&str>, insecure: bool) -> RemoteCacheArgs {
        RemoteCacheArgs {
            remote_cache: url.map(str::to_string),
            remote_cache_mode: mode.map(str::to_string),
            remote_cache_insecure: insecure,
        }
    }

    fn policy(text: &str) -> dsl::policy::Policy {
        dsl::policy::Policy::load_str(Path::new("policy.yml"), text).unwrap()
    }

    fn err(r: Result<Option<RemoteConfig>, StartError>) -> String {
        match r {
            Err(StartError::Invalid(m)) => m,
            other => panic!("expected an invalid request, got {:?}", other.map(|c| c.map(|c| c.url))),
        }
    }

    #[test]
    fn the_policy_is_the_default_and_a_cap() {
        let none = dsl::policy::Policy::default();
        assert!(resolve(&args(None, None, false), &none).unwrap().is_none());
        let c = resolve(&args(Some("oci://127.0.0.1:5000/cache"), None, false), &none).unwrap().unwrap();
        assert_eq!((c.url.to_string().as_str(), c.mode, c.insecure), ("oci://127.0.0.1:5000/cache", Mode::ReadWrite, false));

        let p = policy("remote_cache:\n  url: oci://127.0.0.1:5000/cache\n  mode: read\n");
        let c = resolve(&args(None, None, false), &p).unwrap().unwrap();
        assert_eq!((c.url.to_string().as_str(), c.mode), ("oci://127.0.0.1:5000/cache", Mode::Read));
        // The same URL, a mode within the cap: fine.
        assert!(resolve(&args(Some("oci://127.0.0.1:5000/cache"), Some("read"), false), &p).is_ok());
        let m = err(resolve(&args(None, Some("readwrite"), false), &p));
        assert!(m.contains("caps the remote cache at mode read (policy.yml:3)"), "{m}");
        let m = err(resolve(&args(Some("oci://127.0.0.1:5001/other"), None, false), &p));
        assert!(m.contains("pins the remote cache to oci://127.0.0.1:5000/cache (policy.yml:2)"), "{m}");

        let p = policy("remote_cache:\n  url: oci://127.0.0.1:5000/cache\n  mode: readwrite\n  insecure: false\n");
        assert_eq!(resolve(&args(None, Some("write"), false), &p).unwrap().unwrap().mode, Mode::Write);
        assert!(err(resolve(&args(None, None, true), &p)).contains("policy.yml:4"));
    }

    #[test]
    fn bad_urls_are_invalid_requests() {
        let none = dsl::policy::Policy::default();
        for bad in ["http://x/y", "oci://", "oci://user:secret@host/repo"] {
            let m = err(resolve(&args(Some(bad), None, false), &none));
            assert!(!m.contains("secret"), "{m}");
        }
        let m = err(resolve(&args(None, None, false), &policy("remote_cache: nope\n")));
        assert!(m.contains("policy.yml:1"), "{m}");
    }
}
