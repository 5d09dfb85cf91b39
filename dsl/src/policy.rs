//! Operator policy: caps on what any workflow may ask for (maximum limits, allowed networks,
//! allowed image prefixes, root or not). A workflow that asks for more is rejected at load time
//! with a diagnostic at the workflow line and a related one at the policy line.
//!
//! This module owns the policy data and the comparison; reading the policy file's YAML lives in
//! `policy_file` (`Policy::load`), and this module must not decide defaults of
//! workflows nor see YAML.

use std::sync::Arc;
use std::time::Duration;

use crate::diagnostic::Diagnostic;
use crate::ir::{Network, SourceFile, Span, User};
use crate::units::{format_cpus, format_duration, format_size};

/// A policy value and the line of the policy file that set it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Capped<T> {
    pub value: T,
    pub span: Span,
}

/// What an operator allows. [`Policy::default()`] caps nothing and refuses root.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// The policy file, when the policy came from one (for the related diagnostic).
    pub(crate) source: Option<Arc<SourceFile>>,
    pub(crate) max_cpus: Option<Capped<u64>>,
    pub(crate) max_memory: Option<Capped<u64>>,
    pub(crate) max_pids: Option<Capped<u64>>,
    pub(crate) max_timeout: Option<Capped<Duration>>,
    pub(crate) max_tmpfs: Option<Capped<u64>>,
    pub(crate) max_workspace: Option<Capped<u64>>,
    pub(crate) max_outputs: Option<Capped<u64>>,
    pub(crate) networks: Option<Capped<Vec<Network>>>,
    pub(crate) image_prefixes: Option<Capped<Vec<String>>>,
    pub(crate) allow_root: Option<Capped<bool>>,
    /// `allow_root_builds`: whether image build stages may run as uid 0 (see
    /// [`Policy::allows_root_builds`]).
    pub(crate) allow_root_builds: Option<Capped<bool>>,
    /// `remote_cache:`: the machine's remote cache (see [`Policy::remote_cache`]).
    pub(crate) remote_cache: Option<RemoteCachePolicy>,
}

/// The policy's `remote_cache:` as written (a URL string, or `{ url, mode, insecure }`). The
/// values are checked by their user (the engine parses the URL); `mode` is already one of
/// `read`, `write`, `readwrite`.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct RemoteCachePolicy {
    pub url: Option<Capped<String>>,
    pub mode: Option<Capped<String>>,
    pub insecure: Option<Capped<bool>>,
}

/// One value of the policy's `remote_cache:` and where the policy file says it (`FILE:LINE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyValue<T> {
    /// The value as written.
    pub value: T,
    /// `policy.yml:3`: the file as named on the command line, and the line.
    pub at: String,
}

/// The policy's `remote_cache:` setting (every field optional).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoteCacheSetting {
    /// `url` (or the whole value when it is a string): the default, and the only URL allowed.
    pub url: Option<PolicyValue<String>>,
    /// `mode`: `read`, `write` or `readwrite`, the most a run may do.
    pub mode: Option<PolicyValue<String>>,
    /// `insecure`: plain HTTP allowed to a host that is not loopback.
    pub insecure: Option<PolicyValue<bool>>,
}

impl Policy {
    /// Whether workflows may run steps as uid 0.
    pub fn allows_root(&self) -> bool {
        self.allow_root.as_ref().is_some_and(|c| c.value)
    }

    /// Whether image build stages may run as uid 0 (and `dockerfile:` images be built at all):
    /// `allow_root_builds` when the policy says it; else, in a policy file, its `allow_root`
    /// (false when absent); without a policy file, true (Docker's build semantics).
    pub fn allows_root_builds(&self) -> bool {
        match (&self.allow_root_builds, &self.source) {
            (Some(c), _) => c.value,
            (None, None) => true,
            (None, Some(_)) => self.allows_root(),
        }
    }

    /// The policy's `remote_cache:`, if it has one: the machine's remote cache for every
    /// workflow. Its URL is pinned (a run may not name another) and its mode is a cap.
    pub fn remote_cache(&self) -> Option<RemoteCacheSetting> {
        let rc = self.remote_cache.as_ref()?;
        let file = self.source.as_ref().map(|s| s.path.display().to_string()).unwrap_or_else(|| "the policy".into());
        fn at<T: Clone>(file: &str, c: &Option<Capped<T>>) -> Option<PolicyValue<T>> {
            c.as_ref().map(|c| PolicyValue { value: c.value.clone(), at: format!("{file}:{}", c.span.line) })
        }
        Some(RemoteCacheSetting { url: at(&file, &rc.url), mode: at(&file, &rc.mode), insecure: at(&file, &rc.insecure) })
    }

    /// The image prefixes the policy allows (`image_prefixes`), if it restricts images at all:
    /// for image builds, and for `engine replay`, which checks a recorded image's tags with it.
    pub fn image_prefixes(&self) -> Option<&[String]> {
        self.image_prefixes.as_ref().map(|c| c.value.as_slice())
    }

    /// The policy line that refuses root builds: `allow_root_builds`, else `allow_root`, else the
    /// top of the policy file (neither said, so both are false).
    fn root_builds_related(&self, d: Diagnostic) -> Diagnostic {
        let (span, message) = match (&self.allow_root_builds, &self.allow_root) {
            (Some(c), _) => (c.span, "root builds are refused here"),
            (None, Some(c)) => (c.span, "`allow_root_builds` defaults to `allow_root`, false here"),
            (None, None) => (
                Span { offset: 0, len: 0, line: 1, col: 1 },
                "this policy sets neither `allow_root_builds` nor `allow_root`, so root builds are refused",
            ),
        };
        self.with_related(d, span, message)
    }

    /// The related diagnostic pointing at the policy line, when there is a policy file.
    fn at(&self, span: Span, message: String) -> Option<Diagnostic> {
        self.source.as_ref().map(|src| Diagnostic::new(src, span, message, "set by the policy"))
    }

    /// Checks one thing a workflow asks for; `None` when allowed.
    pub(crate) fn check(&self, src: &SourceFile, ask: &Ask) -> Option<Diagnostic> {
        let who = &ask.who;
        match &ask.asked {
            Asked::Cpus(v) => self.over(src, ask, "cpus", v, &self.max_cpus, |v| format_cpus(*v)),
            Asked::Memory(v) => self.over(src, ask, "memory", v, &self.max_memory, |v| format_size(*v)),
            Asked::Pids(v) => self.over(src, ask, "pids", v, &self.max_pids, |v| v.to_string()),
            Asked::Timeout(v) => self.over(src, ask, "timeout", v, &self.max_timeout, |v| format_duration(*v)),
            Asked::Tmpfs(v) => self.over(src, ask, "tmpfs", v, &self.max_tmpfs, |v| format_size(*v)),
            Asked::Workspace(v) => self.over(src, ask, "workspace", v, &self.max_workspace, |v| format_size(*v)),
            Asked::Outputs(v) => self.over(src, ask, "outputs", v, &self.max_outputs, |v| format_size(*v)),
            Asked::Network(n) => {
                let allowed = self.networks.as_ref()?;
                if allowed.value.contains(n) {
                    return None;
                }
                let names: Vec<&str> = allowed.value.iter().map(|n| n.as_str()).collect();
                let d = Diagnostic::new(
                    src,
                    ask.span,
                    format!("{who} asks for network {}{}, which the policy does not allow", n.as_str(), ask.note()),
                    "network not allowed",
                )
                .with_help(format!("the policy allows: {}", names.join(", ")));
                Some(self.with_related(d, allowed.span, "the policy's allowed networks"))
            }
            Asked::Image(image) => {
                let prefixes = self.image_prefixes.as_ref()?;
                if prefixes.value.iter().any(|p| image.starts_with(p.as_str())) {
                    return None;
                }
                let list: Vec<String> = prefixes.value.iter().map(|p| format!("`{p}`")).collect();
                let d = Diagnostic::new(
                    src,
                    ask.span,
                    format!("{who} uses image `{image}`, which the policy does not allow"),
                    "image not allowed",
                )
                .with_help(format!("the policy allows images starting with {}", list.join(", ")));
                Some(self.with_related(d, prefixes.span, "the policy's allowed image prefixes"))
            }
            Asked::User(user) => {
                // Group root is root's files too: gid 0 is refused like uid 0.
                if (user.uid != 0 && user.gid != 0) || self.allows_root() {
                    return None;
                }
                let what = if user.uid == 0 { "as root (uid 0)" } else { "with group root (gid 0)" };
                let d = Diagnostic::new(src, ask.span, format!("{who} asks to run {what}, which is not allowed"), "root")
                    .with_help("use a non-root user such as \"1000:1000\"; root is only accepted when the operator's policy file (`--policy FILE` or ENGINE_POLICY) says `allow_root: true`");
                Some(match &self.allow_root {
                    Some(c) => self.with_related(d, c.span, "root is refused here"),
                    None => d,
                })
            }
            Asked::UnresolvedImage(image) => {
                let prefixes = self.image_prefixes.as_ref()?;
                let d = Diagnostic::new(
                    src,
                    ask.span,
                    format!("{who} uses image `{image}`, which cannot be checked against the policy's allowed images"),
                    "unresolvable image",
                )
                .with_help("write the image reference literally (no `$` variables) so that it can be checked");
                Some(self.with_related(d, prefixes.span, "the policy's allowed image prefixes"))
            }
            Asked::RootBuild => {
                if self.allows_root_builds() {
                    return None;
                }
                let d = Diagnostic::new(src, ask.span, format!("{who} runs as root (uid 0), which the policy does not allow for image builds"), "root build")
                    .with_help("give the stage a numeric non-root `user:` such as \"1000:1000\" (named users cannot be checked), or have the operator set `allow_root_builds: true` in the policy");
                Some(self.root_builds_related(d))
            }
            Asked::DockerfileBuild => {
                if self.allows_root_builds() {
                    return None;
                }
                let d = Diagnostic::new(src, ask.span, format!("{who} is built from a Dockerfile, which the policy does not allow without root builds"), "Dockerfile build")
                    .with_help("the daemon's builder runs Dockerfile instructions as whatever `USER` the Dockerfile says and cannot be held to a non-root user; rewrite the image as `stages:` with a numeric non-root `user:`, or have the operator set `allow_root_builds: true`");
                Some(self.root_builds_related(d))
            }
        }
    }

    /// A limit above the policy's maximum.
    fn over<T: PartialOrd>(
        &self,
        src: &SourceFile,
        ask: &Ask,
        name: &str,
        asked: &T,
        cap: &Option<Capped<T>>,
        show: fn(&T) -> String,
    ) -> Option<Diagnostic> {
        let cap = cap.as_ref().filter(|c| *asked > c.value)?;
        let (asked, max) = (show(asked), show(&cap.value));
        let note = ask.note();
        let d = Diagnostic::new(src, ask.span, format!("{} asks for {name} {asked}{note}, above the policy's maximum {max}", ask.who), "above the policy's maximum")
            .with_help(format!("set `limits.{name}` to at most {max} (on the step or in `defaults`), or have the operator raise `max_limits.{name}` in the policy"));
        Some(self.with_related(d, cap.span, &format!("the policy caps {name} at {max}")))
    }

    fn with_related(&self, d: Diagnostic, span: Span, message: &str) -> Diagnostic {
        match self.at(span, message.to_string()) {
            Some(r) => d.with_related(r),
            None => d,
        }
    }
}

/// One thing a workflow asks for, and where.
#[derive(Debug, Clone)]
pub(crate) struct Ask {
    /// "step `x`" or "image `t`".
    pub who: String,
    pub asked: Asked,
    pub span: Span,
    /// The value is a built-in default nobody wrote (the span is then the step's key).
    pub builtin: bool,
}

impl Ask {
    fn note(&self) -> &'static str {
        if self.builtin {
            " (the built-in default)"
        } else {
            ""
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) enum Asked {
    Cpus(u64),
    Memory(u64),
    Pids(u64),
    Timeout(Duration),
    Tmpfs(u64),
    Workspace(u64),
    Outputs(u64),
    Network(Network),
    Image(String),
    User(User),
    /// An image reference a Dockerfile reads that cannot be resolved at load (`FROM ${BASE}`).
    UnresolvedImage(String),
    /// An image build stage whose effective user is uid 0 (no `user:`, or uid 0).
    RootBuild,
    /// A `dockerfile:` image (the daemon's builder, whose user cannot be bound).
    DockerfileBuild,
}
