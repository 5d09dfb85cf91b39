//! Reading an operator policy file (YAML) into a [`Policy`], with the same diagnostics as
//! workflow files (unknown keys, wrong types, bad units), each pointing at the policy line.
//!
//! This module only parses (it is [`Policy::load`]); comparing workflows against the policy
//! lives in [`crate::policy`], which knows nothing of YAML.

use std::path::Path;
use std::sync::Arc;

use crate::diagnostic::finish;
use crate::ir::SourceFile;
use crate::policy::{Capped, Policy, RemoteCachePolicy};
use crate::resolve::{names::check_version, settings};
use crate::yaml::reader::Reader;
use crate::{bounds, units, LoadError};

const POLICY_KEYS: &[&str] = &["version", "max_limits", "networks", "image_prefixes", "allow_root", "allow_root_builds", "remote_cache"];
const REMOTE_CACHE_KEYS: &[&str] = &["url", "mode", "insecure"];
const REMOTE_CACHE_MODES: &[&str] = &["read", "write", "readwrite"];

impl Policy {
    /// Reads and validates a policy file (YAML, see docs/workflow.md for the format).
    pub fn load(path: &Path) -> Result<Policy, LoadError> {
        let text = bounds::read_regular(path, bounds::MAX_FILE_BYTES, false)
            .map_err(|source| LoadError::PolicyIo { path: path.to_path_buf(), source })?;
        Policy::load_str(path, &text)
    }

    /// Parses policy text as if read from `path` (used in messages).
    pub fn load_str(path: &Path, text: &str) -> Result<Policy, LoadError> {
        load_policy(path, text)
    }
}

fn load_policy(path: &Path, text: &str) -> Result<Policy, LoadError> {
    let src = Arc::new(SourceFile { path: path.to_path_buf(), text: text.to_string() });
    let mut r = Reader::new(&src);
    let mut policy = Policy { source: Some(src.clone()), ..Policy::default() };
    let Some(root) = r.parse() else {
        return finish(path, r.diags, policy);
    };
    let Some(top) = r.mapping(&root, "the policy file") else {
        return finish(path, r.diags, policy);
    };
    r.check_keys(top, POLICY_KEYS, "the policy");
    // The version is optional in a policy; when given it must be 1.
    if top.get_node("version").is_some() {
        check_version(&mut r, top, "policy");
    }
    if let Some(max) = top.get_node("max_limits").and_then(|n| r.mapping(n, "`max_limits`")) {
        r.check_keys(max, settings::LIMIT_KEYS, "`max_limits`");
        let capped = |(value, span)| Capped { value, span };
        policy.max_cpus = r.parsed(max, "cpus", units::parse_cpus, units::CPUS_HELP).map(capped);
        policy.max_memory = r.parsed(max, "memory", units::parse_size, units::SIZE_HELP).map(capped);
        policy.max_pids = r.parsed(max, "pids", units::parse_count, units::PIDS_HELP).map(capped);
        policy.max_tmpfs = r.parsed(max, "tmpfs", units::parse_size, units::SIZE_HELP).map(capped);
        policy.max_workspace = r.parsed(max, "workspace", units::parse_size, units::SIZE_HELP).map(capped);
        policy.max_outputs = r.parsed(max, "outputs", units::parse_size, units::SIZE_HELP).map(capped);
        policy.max_timeout =
            r.parsed(max, "timeout", units::parse_duration, units::DURATION_HELP).map(|(value, span)| Capped { value, span });
    }
    if let Some(node) = top.get_node("networks") {
        let span = r.span(node);
        if let marked_yaml::Node::Sequence(items) = node {
            let value = items.iter().filter_map(|n| settings::network(&mut r, n)).collect();
            policy.networks = Some(Capped { value, span });
        } else {
            r.string_list(node, "`networks`");
        }
    }
    if let Some(node) = top.get_node("image_prefixes") {
        let span = r.span(node);
        if let Some(list) = r.string_list(node, "`image_prefixes`") {
            policy.image_prefixes = Some(Capped { value: list.into_iter().map(|(p, _)| p).collect(), span });
        }
    }
    if let Some(node) = top.get_node("allow_root") {
        let span = r.span(node);
        if let Some(value) = r.bool(node, "`allow_root`") {
            policy.allow_root = Some(Capped { value, span });
        }
    }
    if let Some(node) = top.get_node("allow_root_builds") {
        let span = r.span(node);
        if let Some(value) = r.bool(node, "`allow_root_builds`") {
            policy.allow_root_builds = Some(Capped { value, span });
        }
    }
    if let Some(node) = top.get_node("remote_cache") {
        policy.remote_cache = remote_cache(&mut r, node);
    }
    let diags = std::mem::take(&mut r.diags);
    finish(path, diags, policy)
}

/// `remote_cache: oci://…` or `remote_cache: { url: …, mode: read|write|readwrite, insecure: bool }`.
fn remote_cache(r: &mut Reader, node: &marked_yaml::Node) -> Option<RemoteCachePolicy> {
    if let marked_yaml::Node::Scalar(_) = node {
        let (value, span) = r.string(node, "`remote_cache`")?;
        return Some(RemoteCachePolicy { url: Some(Capped { value, span }), ..RemoteCachePolicy::default() });
    }
    let map = r.mapping(node, "`remote_cache` (a URL, or a mapping with `url`, `mode`, `insecure`)")?;
    r.check_keys(map, REMOTE_CACHE_KEYS, "`remote_cache`");
    let mut rc = RemoteCachePolicy::default();
    if let Some(n) = map.get_node("url") {
        rc.url = r.string(n, "`remote_cache.url`").map(|(value, span)| Capped { value, span });
    }
    if let Some(n) = map.get_node("mode") {
        if let Some((value, span)) = r.string(n, "`remote_cache.mode`") {
            if REMOTE_CACHE_MODES.contains(&value.as_str()) {
                rc.mode = Some(Capped { value, span });
            } else {
                r.error(span, format!("invalid remote cache mode `{value}`"), "unknown mode", "use read, write or readwrite");
            }
        }
    }
    if let Some(n) = map.get_node("insecure") {
        let span = r.span(n);
        rc.insecure = r.bool(n, "`remote_cache.insecure`").map(|value| Capped { value, span });
    }
    Some(rc)
}
