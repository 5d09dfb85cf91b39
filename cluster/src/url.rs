//! `nats://HOST:PORT[,HOST:PORT…]`: the servers of a cluster (any one is enough to connect; the
//! others are tried when it is down). No credentials in the address.

use std::fmt;
use std::str::FromStr;

/// Most servers in one address.
const MAX_SERVERS: usize = 16;

/// A cluster address, checked.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterUrl {
    servers: Vec<(String, u16)>,
}

/// Why a cluster address is refused (the text never repeats a credential).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cluster address: {0} (expected nats://HOST:PORT[,HOST:PORT...])")]
pub struct BadClusterUrl(String);

impl FromStr for ClusterUrl {
    type Err = BadClusterUrl;

    fn from_str(s: &str) -> Result<ClusterUrl, BadClusterUrl> {
        let rest = s.strip_prefix("nats://").ok_or_else(|| BadClusterUrl("it does not start with nats://".into()))?;
        if rest.len() > 4096 {
            return Err(BadClusterUrl("longer than 4096 bytes".into()));
        }
        let mut servers = Vec::new();
        for part in rest.split(',') {
            let part = part.strip_prefix("nats://").unwrap_or(part);
            if part.contains('@') {
                return Err(BadClusterUrl("credentials do not go in the address".into()));
            }
            let (host, port) = match part.rsplit_once(':') {
                Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                    (h, p.parse::<u16>().map_err(|_| BadClusterUrl(format!("bad port in `{}`", part.escape_debug())))?)
                }
                _ => (part, 4222),
            };
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            let ok = !bare.is_empty() && bare.len() <= 253 && bare.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:".contains(&b));
            if !ok || port == 0 {
                return Err(BadClusterUrl(format!("bad server `{}`", part.escape_debug())));
            }
            servers.push((host.to_string(), port));
        }
        if servers.len() > MAX_SERVERS {
            return Err(BadClusterUrl(format!("more than {MAX_SERVERS} servers")));
        }
        Ok(ClusterUrl { servers })
    }
}

impl ClusterUrl {
    /// The servers as the client takes them (`nats://HOST:PORT` each).
    pub(crate) fn servers(&self) -> Vec<async_nats::ServerAddr> {
        self.servers.iter().filter_map(|(h, p)| format!("nats://{h}:{p}").parse().ok()).collect()
    }

    /// How many servers the address names.
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    /// Never true: an address names at least one server.
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }
}

impl fmt::Display for ClusterUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list: Vec<String> = self.servers.iter().map(|(h, p)| format!("{h}:{p}")).collect();
        write!(f, "nats://{}", list.join(","))
    }
}

impl fmt::Debug for ClusterUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterUrl({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_or_say_why() {
        let u: ClusterUrl = "nats://127.0.0.1:4222,nats-2:4223".parse().unwrap();
        assert_eq!(u.to_string(), "nats://127.0.0.1:4222,nats-2:4223");
        assert_eq!("nats://n1".parse::<ClusterUrl>().unwrap().to_string(), "nats://n1:4222");
        for bad in ["http://x:1", "nats://", "nats://u:secret@x:1", "nats://x:0", "nats://x:99999", "nats://a b:1", "nats://x:1,,y:2"] {
            let err = bad.parse::<ClusterUrl>().unwrap_err().to_string();
            assert!(!err.contains("secret"), "{err}");
        }
    }
}
