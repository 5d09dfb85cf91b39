//! `oci://HOST[:PORT]/REPO`: parsing and checking a `--remote-cache` value.

use std::net::{IpAddr, Ipv6Addr};

use crate::{BadRemoteUrl, RemoteUrl};

/// Docker's bound on a repository name (with its registry).
const MAX_NAME: usize = 255;
/// Longer input is cut in error messages.
const MAX_SHOWN: usize = 300;

/// `text` without a `user:password@` part (and cut to a readable length), for error messages.
fn shown(text: &str) -> String {
    let stripped = match text.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            match rest[..authority_end].rfind('@') {
                Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
                None => text.to_string(),
            }
        }
        None => match text.find('/').map(|slash| &text[..slash]).unwrap_or(text).rfind('@') {
            Some(at) => text[at + 1..].to_string(),
            None => text.to_string(),
        },
    };
    stripped.chars().take(MAX_SHOWN).collect::<String>().escape_debug().to_string()
}

/// Whether `repo` is an OCI repository name: `[a-z0-9]+([._-][a-z0-9]+)*` components (`__`
/// allowed as a separator, as the distribution spec does), joined by `/`.
pub(crate) fn valid_repository(repo: &str) -> bool {
    !repo.is_empty() && repo.split('/').all(valid_component)
}

fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator: `.`, `_`, `__`, or one or more `-`, always between alphanumerics.
        let start = i;
        match b[i] {
            b'.' => i += 1,
            b'_' => i += if b.get(i + 1) == Some(&b'_') { 2 } else { 1 },
            b'-' => {
                while b.get(i) == Some(&b'-') {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start || !b.get(i).is_some_and(|&c| is_alnum(c)) {
            return false;
        }
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

fn valid_hostname(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

pub(crate) fn parse(text: &str) -> Result<RemoteUrl, BadRemoteUrl> {
    let bad = |why: &str| BadRemoteUrl { text: shown(text), why: why.to_string() };
    if text.len() > 4 * MAX_NAME {
        return Err(bad("too long"));
    }
    let Some(rest) = text.strip_prefix("oci://") else {
        return Err(match text.split_once("://") {
            Some(_) => bad("the scheme must be oci://"),
            None => bad("missing the oci:// scheme"),
        });
    };
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("contains white space or control characters"));
    }
    if rest.contains('?') || rest.contains('#') {
        return Err(bad("a query or fragment is not allowed"));
    }
    let (authority, repo) = rest.split_once('/').unwrap_or((rest, ""));
    if authority.contains('@') {
        return Err(bad("credentials are not allowed in the URL (use docker login / config.json)"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let Some((addr, after)) = v6.split_once(']') else {
            return Err(bad("unclosed `[` in the host"));
        };
        if addr.parse::<Ipv6Addr>().is_err() {
            return Err(bad("invalid IPv6 address"));
        }
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(|| bad("invalid host"))?),
        };
        (format!("[{addr}]"), port)
    } else {
        let (host, port) = match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        if host.is_empty() {
            return Err(bad("missing host"));
        }
        if !valid_hostname(host) {
            return Err(bad("invalid host"));
        }
        (host.to_ascii_lowercase(), port)
    };
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Some(n),
            _ => return Err(bad("invalid port")),
        },
    };
    if repo.is_empty() {
        return Err(bad("missing the repository (oci://HOST/REPO)"));
    }
    if !valid_repository(repo) {
        return Err(bad("invalid repository name (lowercase letters, digits and . _ - separators, / between parts)"));
    }
    let url = RemoteUrl { host, port, repo: repo.to_string() };
    if url.registry().len() + 1 + repo.len() > MAX_NAME {
        return Err(bad("the repository name is longer than 255 characters"));
    }
    Ok(url)
}

pub(crate) fn is_loopback(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_urls_parse_into_registry_and_repository() {
        for (text, registry, repo, loopback) in [
            ("oci://127.0.0.1:5000/cache", "127.0.0.1:5000", "cache", true),
            ("oci://localhost/team/cache", "localhost", "team/cache", true),
            ("oci://127.9.8.7:1/a", "127.9.8.7:1", "a", true),
            ("oci://[::1]:5000/x", "[::1]:5000", "x", true),
            ("oci://ghcr.io/org/engine-cache", "ghcr.io", "org/engine-cache", false),
            ("oci://Registry.Example.com:443/a.b/c__d/e-f", "registry.example.com:443", "a.b/c__d/e-f", false),
            ("oci://10.0.0.1/x", "10.0.0.1", "x", false),
            ("oci://[fe80::1]/x", "[fe80::1]", "x", false),
        ] {
            let url: RemoteUrl = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(url.registry(), registry, "{text}");
            assert_eq!(url.repository(), repo, "{text}");
            assert_eq!(url.is_loopback(), loopback, "{text}");
            assert_eq!(url.to_string().parse::<RemoteUrl>().unwrap(), url, "{text}");
        }
    }

    #[test]
    fn rejected_urls_say_why_and_never_show_credentials() {
        let long = format!("oci://r.io/{}", "a".repeat(260));
        for (text, why) in [
            ("https://r.io/x", "scheme"),
            ("r.io/x", "scheme"),
            ("oci://user:hunter2@r.io/x", "credentials"),
            ("oci://hunter2@r.io/x", "credentials"),
            ("oci://r.io/x?a=b", "query"),
            ("oci://r.io/x#frag", "query"),
            ("oci://r.io", "repository"),
            ("oci://r.io/", "repository"),
            ("oci://r.io/Upper", "invalid repository"),
            ("oci://r.io/a//b", "invalid repository"),
            ("oci://r.io/a/", "invalid repository"),
            ("oci://r.io/-a", "invalid repository"),
            ("oci://r.io/a..b", "invalid repository"),
            ("oci://r.io/a___b", "invalid repository"),
            ("oci://r.io:0/x", "port"),
            ("oci://r.io:65536/x", "port"),
            ("oci://r.io:+80/x", "port"),
            ("oci://r.io:/x", "port"),
            ("oci://:5000/x", "host"),
            ("oci://r_o.io/x", "host"),
            ("oci://[::1/x", "host"),
            ("oci://[zz]/x", "IPv6"),
            ("oci://r.io/a b", "white space"),
            (long.as_str(), "longer than 255"),
        ] {
            let err = text.parse::<RemoteUrl>().expect_err(text);
            let shown = err.to_string();
            assert!(err.why.contains(why), "{text}: {shown}");
            assert!(!shown.contains("hunter2"), "{text}: {shown}");
        }
    }
}
