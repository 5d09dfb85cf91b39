//! The settings that layer (built-in defaults < workflow `defaults:` < `profile:` < the step's
//! own keys): image, network, user, workdir and limits. Each value remembers the node it came
//! from, so policy violations point at the line that asked, wherever in the layering it was.
//!
//! This module parses and merges those settings; it must not decide anything about steps as a
//! whole (commands, needs, outputs).

use std::time::Duration;

use marked_yaml::types::MarkedMappingNode;
use marked_yaml::Node;

use crate::bounds;
use crate::ir::{Isolation, Limits, Network, Span, User};
use crate::policy::{Ask, Asked};
use crate::suggest;
use crate::units;
use crate::yaml::reader::Reader;

pub(crate) const LIMIT_KEYS: &[&str] = &["cpus", "memory", "pids", "timeout", "tmpfs", "workspace", "outputs"];
/// Docker refuses smaller memory limits; a tmpfs that small is useless too.
const MIN_SIZE: u64 = 6 << 20;

/// A value and where it was written (`None`: a built-in default).
#[derive(Debug, Clone)]
pub(super) struct Val<T> {
    pub value: T,
    pub span: Option<Span>,
}

fn val<T>(value: T, span: Option<Span>) -> Option<Val<T>> {
    Some(Val { value, span })
}

#[derive(Debug, Clone, Default)]
pub(super) struct Layer {
    pub image: Option<Val<String>>,
    pub network: Option<Val<Network>>,
    pub user: Option<Val<User>>,
    pub workdir: Option<Val<String>>,
    pub cpus: Option<Val<u64>>,
    pub memory: Option<Val<u64>>,
    pub pids: Option<Val<u64>>,
    pub timeout: Option<Val<Duration>>,
    pub tmpfs: Option<Val<u64>>,
    pub workspace: Option<Val<u64>>,
    pub outputs: Option<Val<u64>>,
}

impl Layer {
    /// The spec's isolation defaults.
    pub fn builtin() -> Layer {
        let iso = Isolation::default();
        Layer {
            network: val(iso.network, None),
            user: val(iso.user, None),
            workdir: val("/workspace".to_string(), None),
            ..Layer::with_limits(Limits::default(), None)
        }
    }

    pub(super) fn with_limits(l: Limits, span: Option<Span>) -> Layer {
        Layer {
            cpus: val(l.millicpus, span),
            memory: val(l.memory, span),
            pids: val(l.pids, span),
            timeout: val(l.timeout, span),
            tmpfs: val(l.tmpfs, span),
            workspace: val(l.workspace, span),
            outputs: val(l.outputs, span),
            ..Layer::default()
        }
    }

    /// A named profile; both set network none and a full set of limits.
    pub fn profile(name: &str, span: Span) -> Option<Layer> {
        let limits = match name {
            "sandbox" => Limits::sandbox(),
            "build" => Limits::default(),
            _ => return None,
        };
        Some(Layer { network: val(Network::None, Some(span)), ..Layer::with_limits(limits, Some(span)) })
    }

    /// `self` with every value `top` sets replaced.
    pub fn over(self, top: &Layer) -> Layer {
        fn pick<T: Clone>(low: Option<Val<T>>, high: &Option<Val<T>>) -> Option<Val<T>> {
            high.clone().or(low)
        }
        Layer {
            image: pick(self.image, &top.image),
            network: pick(self.network, &top.network),
            user: pick(self.user, &top.user),
            workdir: pick(self.workdir, &top.workdir),
            cpus: pick(self.cpus, &top.cpus),
            memory: pick(self.memory, &top.memory),
            pids: pick(self.pids, &top.pids),
            timeout: pick(self.timeout, &top.timeout),
            tmpfs: pick(self.tmpfs, &top.tmpfs),
            workspace: pick(self.workspace, &top.workspace),
            outputs: pick(self.outputs, &top.outputs),
        }
    }

    /// Reads the keys of `map` this layer knows (unknown keys are the caller's business).
    pub fn read(&mut self, r: &mut Reader, map: &MarkedMappingNode) {
        if let Some((image, span)) = map.get_node("image").and_then(|n| r.string(n, "`image`")) {
            if image.trim().is_empty() || image.contains(char::is_whitespace) {
                r.error(
                    span,
                    format!("invalid image `{image}`"),
                    "invalid image",
                    "expected an image reference such as local/busybox:1, or the name of an entry under `images:`",
                );
            } else {
                self.image = val(image, Some(span));
            }
        }
        if let Some(n) = map.get_node("network") {
            let span = r.span(n);
            self.network = network(r, n).and_then(|v| val(v, Some(span)));
        }
        if let Some((u, span)) = map.get_node("user").and_then(|n| r.string(n, "`user`")) {
            self.user = parse_user(r, &u, span).and_then(|v| val(v, Some(span)));
        }
        if let Some((w, span)) = map.get_node("workdir").and_then(|n| r.string(n, "`workdir`")) {
            if check_workdir(r, &w, span) {
                self.workdir = val(w, Some(span));
            }
        }
        if let Some(limits) = map.get_node("limits").and_then(|n| r.mapping(n, "`limits`")) {
            r.check_keys(limits, LIMIT_KEYS, "`limits`");
            let mut get = |key: &str, parse: fn(&str) -> Option<u64>, help: &str| {
                r.parsed(limits, key, parse, help).and_then(|(v, span)| val(v, Some(span)))
            };
            self.cpus = get("cpus", units::parse_cpus, units::CPUS_HELP);
            self.memory = get("memory", units::parse_size, units::SIZE_HELP);
            self.pids = get("pids", units::parse_count, units::PIDS_HELP);
            self.tmpfs = get("tmpfs", units::parse_size, units::SIZE_HELP);
            self.workspace = get("workspace", units::parse_size, units::SIZE_HELP);
            self.outputs = get("outputs", units::parse_size, units::SIZE_HELP);
            self.timeout =
                r.parsed(limits, "timeout", units::parse_duration, units::DURATION_HELP).and_then(|(d, span)| val(d, Some(span)));
            self.check_maxima(r);
            for (key, v) in [("memory", &mut self.memory), ("tmpfs", &mut self.tmpfs)] {
                if let Some(Val { value, span: Some(span) }) = v {
                    if *value < MIN_SIZE {
                        r.error(
                            *span,
                            format!("{key} `{}` is below the minimum of 6m", units::format_size(*value)),
                            "too small",
                            format!("Docker refuses limits below 6m; {}", units::SIZE_HELP),
                        );
                        *v = None;
                    }
                }
            }
        }
    }

    /// Every limit has a maximum the engine can honour (see [`bounds`]); a value over it is
    /// refused at its line and dropped.
    fn check_maxima(&mut self, r: &mut Reader) {
        fn over<T: PartialOrd>(r: &mut Reader, key: &str, v: &mut Option<Val<T>>, max: T, show: impl Fn(&T) -> String) {
            if let Some(Val { value, span: Some(span) }) = v {
                if *value > max {
                    let (asked, max) = (show(value), show(&max));
                    r.error(
                        *span,
                        format!("{key} {asked} is above the maximum of {max}"),
                        "too large",
                        format!("`limits.{key}` may be at most {max}"),
                    );
                    *v = None;
                }
            }
        }
        over(r, "cpus", &mut self.cpus, bounds::MAX_MILLICPUS, |v| units::format_cpus(*v));
        over(r, "memory", &mut self.memory, bounds::MAX_MEMORY, |v| units::format_size(*v));
        over(r, "pids", &mut self.pids, bounds::MAX_PIDS, u64::to_string);
        let days = |v: &Duration| match v.as_secs() {
            s if v.subsec_nanos() == 0 && s > 0 && s % 86_400 == 0 => format!("{}d", s / 86_400),
            _ => units::format_duration(*v),
        };
        over(r, "timeout", &mut self.timeout, bounds::MAX_TIMEOUT, days);
        over(r, "tmpfs", &mut self.tmpfs, bounds::MAX_TMPFS, |v| units::format_size(*v));
        over(r, "workspace", &mut self.workspace, bounds::MAX_WORKSPACE, |v| units::format_size(*v));
        over(r, "outputs", &mut self.outputs, bounds::MAX_OUTPUTS, |v| units::format_size(*v));
    }

    pub fn limits(&self) -> Limits {
        let d = Limits::default();
        Limits {
            millicpus: self.cpus.as_ref().map_or(d.millicpus, |v| v.value),
            memory: self.memory.as_ref().map_or(d.memory, |v| v.value),
            pids: self.pids.as_ref().map_or(d.pids, |v| v.value),
            timeout: self.timeout.as_ref().map_or(d.timeout, |v| v.value),
            tmpfs: self.tmpfs.as_ref().map_or(d.tmpfs, |v| v.value),
            workspace: self.workspace.as_ref().map_or(d.workspace, |v| v.value),
            outputs: self.outputs.as_ref().map_or(d.outputs, |v| v.value),
        }
    }

    pub fn isolation(&self) -> Isolation {
        let d = Isolation::default();
        Isolation { network: self.network.as_ref().map_or(d.network, |v| v.value), user: self.user.as_ref().map_or(d.user, |v| v.value) }
    }

    /// What this (resolved) layer asks of the policy; built-in values point at the step's key.
    pub fn asks(&self, who: &str, fallback: Span, out: &mut Vec<Ask>) {
        let asked = [
            self.cpus.as_ref().map(|v| (Asked::Cpus(v.value), v.span)),
            self.memory.as_ref().map(|v| (Asked::Memory(v.value), v.span)),
            self.pids.as_ref().map(|v| (Asked::Pids(v.value), v.span)),
            self.timeout.as_ref().map(|v| (Asked::Timeout(v.value), v.span)),
            self.tmpfs.as_ref().map(|v| (Asked::Tmpfs(v.value), v.span)),
            self.workspace.as_ref().map(|v| (Asked::Workspace(v.value), v.span)),
            self.outputs.as_ref().map(|v| (Asked::Outputs(v.value), v.span)),
            self.network.as_ref().map(|v| (Asked::Network(v.value), v.span)),
            self.user.as_ref().map(|v| (Asked::User(v.value), v.span)),
        ];
        for (asked, span) in asked.into_iter().flatten() {
            out.push(Ask { who: who.to_string(), asked, span: span.unwrap_or(fallback), builtin: span.is_none() });
        }
    }
}

const NETWORKS: &[&str] = &["none", "bridge"];

/// `none` or `bridge`; host networking is refused outright.
pub(crate) fn network(r: &mut Reader, node: &Node) -> Option<Network> {
    let (text, span) = r.string(node, "`network`")?;
    match text.as_str() {
        "none" => Some(Network::None),
        "bridge" => Some(Network::Bridge),
        "host" => {
            r.error(span, "host networking is never allowed", "not allowed", "use `none` (the default) or `bridge`");
            None
        }
        _ => {
            let hint = suggest::hint(&text, NETWORKS.iter().copied());
            r.error(span, format!("unknown network `{text}`{hint}"), "unknown network", "valid networks: none, bridge");
            None
        }
    }
}

/// `"UID:GID"` or `"UID"` (the gid is then the uid), numeric, each in 0..=2^31-2
/// ([`bounds::MAX_ID`]); names are not resolved (a name could be anyone, root included).
pub(super) fn parse_user(r: &mut Reader, text: &str, span: Span) -> Option<User> {
    let (uid, gid) = match text.split_once(':') {
        Some((u, g)) => (u, g),
        None => (text, text),
    };
    // Digits only: `+0` or ` 0` are not ids a reader would recognise as root.
    let id = |s: &str| -> Option<Result<u32, ()>> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(s.parse::<u32>().ok().filter(|n| *n <= bounds::MAX_ID).ok_or(()))
    };
    match (id(uid), id(gid)) {
        (Some(Ok(uid)), Some(Ok(gid))) => Some(User { uid, gid }),
        (Some(_), Some(_)) => {
            r.error(
                span,
                format!("user `{text}` is out of range"),
                "out of range",
                format!("uid and gid are numbers from 0 to {}", bounds::MAX_ID),
            );
            None
        }
        _ => {
            r.error(
                span,
                format!("invalid user `{text}`"),
                "invalid user",
                "expected numeric \"UID:GID\" or \"UID\", e.g. \"1000:1000\" (names such as `root` are not accepted)",
            );
            None
        }
    }
}

/// A working directory must be absolute inside the container.
pub(super) fn check_workdir(r: &mut Reader, w: &str, span: Span) -> bool {
    let ok = w.starts_with('/');
    if !ok {
        r.error(
            span,
            format!("workdir `{w}` is not an absolute path"),
            "relative path",
            "expected an absolute path inside the container, e.g. /workspace/src",
        );
    }
    ok
}
