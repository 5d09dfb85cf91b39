//! Text for the cache commands: `engine cache explain` (the full key breakdown of a step) and
//! the sizes and ages of `engine cache ls`, and the [`Forecast`] of a step (what the dry run
//! predicted) they and `engine plan` show. Formatting only; the decisions come from `caching`.

use std::fmt::Write as _;

use crate::executor::{Prediction, RunReason, Would};

/// What the cache will do with one planned step, predicted without running anything.
#[derive(Debug, Clone)]
pub struct Forecast {
    /// Known unless a step it needs will run first, or its image is not built yet.
    pub(crate) components: Option<cache::KeyComponents>,
    pub(crate) cached: bool,
    /// Why it will run; empty when cached.
    pub(crate) reasons: Vec<RunReason>,
}

impl Forecast {
    /// What a dry run predicted.
    pub(crate) fn of(prediction: Prediction) -> Forecast {
        match prediction.would {
            Would::Restore(_) => Forecast { components: prediction.components, cached: true, reasons: Vec::new() },
            Would::Run(reasons) => Forecast { components: prediction.components, cached: false, reasons },
        }
    }

    /// Whether the plan predicts a restore or a run.
    pub fn status(&self) -> crate::output::plan::CacheStatus {
        if self.cached {
            crate::output::plan::CacheStatus::Cached
        } else {
            crate::output::plan::CacheStatus::Run
        }
    }

    /// The forecast as `engine plan` shows it: `cached` or `run`, the key, the reasons.
    pub fn view(&self) -> crate::output::plan::CacheView {
        crate::output::plan::CacheView {
            status: self.status(),
            key: self.components.as_ref().map(|c| c.key()),
            reasons: self.reasons.iter().map(ToString::to_string).collect(),
        }
    }
}

/// `engine cache explain STEP`: status, reasons, key, and every component of the key.
pub fn explain(step: &str, forecast: &Forecast) -> String {
    let mut out = String::new();
    let status = forecast.status();
    let _ = writeln!(out, "step `{step}`: {status}");
    if !forecast.reasons.is_empty() {
        let reasons: Vec<String> = forecast.reasons.iter().map(ToString::to_string).collect();
        let _ = writeln!(out, "  why:      {}", reasons.join("; "));
    }
    let Some(c) = &forecast.components else {
        let image = forecast.reasons.iter().find_map(|r| match r {
            RunReason::ImageNotBuilt(name) => Some(name),
            RunReason::Cache(_) => None,
        });
        match image {
            Some(name) => {
                let _ = writeln!(out, "  key:      not known until image `{name}` is built");
            }
            None => {
                let _ = writeln!(out, "  key:      not known until the steps it needs have run");
            }
        }
        return out;
    };
    let _ = writeln!(out, "  key:      {}", c.key());
    let _ = writeln!(out, "  components (sha256 over a canonical encoding of):");
    let _ = writeln!(out, "    format:   {}", c.format);
    let _ = writeln!(out, "    image:    {}", c.image_id);
    let _ = writeln!(out, "    command:  {}", serde_json::Value::from(c.command.clone()));
    if c.env.is_empty() {
        let _ = writeln!(out, "    env:      -");
    }
    for (i, (k, v)) in c.env.iter().enumerate() {
        let _ = writeln!(out, "    {:<10}{k}={v}", if i == 0 { "env:" } else { "" });
    }
    let _ = writeln!(out, "    workdir:  {}", c.workdir);
    let _ = writeln!(out, "    user:     {}", c.user);
    let _ = writeln!(out, "    network:  {}", c.network);
    let _ = writeln!(out, "    outputs:  {}", list(&c.outputs));
    let _ = writeln!(out, "    secrets:  {} (names only; values never enter a key)", list(&c.secrets));
    let _ = writeln!(out, "    inputs:   {} file{}", c.inputs.len(), if c.inputs.len() == 1 { "" } else { "s" });
    for input in &c.inputs {
        let _ = writeln!(out, "      {:06o}  {}  {}", input.mode, input.digest, input.path);
    }
    let _ = writeln!(out, "    upstream: {}", if c.upstream.is_empty() { "-" } else { "" });
    for up in &c.upstream {
        let _ = writeln!(out, "      {}  outputs of `{}`", up.outputs, up.step);
    }
    out
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.join(", ")
    }
}

/// "3s ago", "5m ago", "2h ago", "4d ago" from unix seconds.
pub fn fmt_age(unix_secs: u64) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let age = now.saturating_sub(unix_secs);
    match age {
        0..=59 => format!("{age}s ago"),
        60..=3599 => format!("{}m ago", age / 60),
        3600..=86_399 => format!("{}h ago", age / 3600),
        _ => format!("{}d ago", age / 86_400),
    }
}
