//! Plans as `engine plan` prints them (text, JSON, with the dry run's cache predictions) and as
//! `engine graph` draws them (DOT, Mermaid): pure functions of the plan. Env values and secret
//! values are never shown, only their names, because plans are printed and pasted into issues.

use std::fmt::Write as _;

use crate::cli::{GraphFormat, OutputFormat};
pub use crate::explain::{CacheStatus, CacheView};
use crate::plan::Plan;

fn image_text(image: &dsl::ImageRef) -> String {
    match image {
        dsl::ImageRef::Reference(r) => r.clone(),
        dsl::ImageRef::Built(name) => format!("{name} (built from images.{name})"),
    }
}

fn list_or_dash(items: &[String]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.join(", ")
    }
}

fn limits_text(l: &dsl::Limits) -> String {
    format!(
        "cpus {}, memory {}, pids {}, timeout {}, tmpfs {}",
        dsl::units::format_cpus(l.millicpus),
        crate::units::fmt_size(l.memory),
        l.pids,
        dsl::units::format_duration(l.timeout),
        crate::units::fmt_size(l.tmpfs)
    )
}

/// The plan as `engine plan` prints it: each step in order with its resolved settings. Env values
/// and secret values are never shown, only their names.
pub fn render_text(plan: &Plan, cache: &[CacheView]) -> String {
    let mut out = String::new();
    let n = plan.steps.len();
    let _ = write!(out, "workflow `{}`: {n} step{} in this order", plan.workflow.name, if n == 1 { "" } else { "s" });
    if !cache.is_empty() {
        let cached = cache.iter().filter(|c| c.status == CacheStatus::Cached).count();
        let _ = write!(out, " ({cached} cached, {} to run)", n - cached);
    }
    let _ = writeln!(out);
    for (pos, planned) in plan.steps.iter().enumerate() {
        let s = &planned.step;
        let needs: Vec<String> = planned.needs.iter().map(|&i| plan.steps[i].step.name.clone()).collect();
        let env: Vec<String> = s.env.keys().cloned().collect();
        let _ = writeln!(out);
        let _ = writeln!(out, "{}. {}", pos + 1, s.name);
        let mut field = |key: &str, value: String| {
            let _ = writeln!(out, "   {:<9}{}", format!("{key}:"), value);
        };
        field("image", image_text(&s.image));
        match &s.command {
            // Continuation lines of a multi-line script keep the value column.
            dsl::Command::Shell(script) => field("run", script.trim_end().replace('\n', "\n            ")),
            dsl::Command::Argv(argv) => {
                let quoted: Vec<String> = argv.iter().map(|a| serde_json::Value::from(a.as_str()).to_string()).collect();
                field("command", format!("[{}]", quoted.join(", ")));
            }
        }
        field("needs", list_or_dash(&needs));
        field("inputs", list_or_dash(&s.inputs));
        field("outputs", list_or_dash(&s.outputs));
        field("network", s.isolation.network.as_str().to_string());
        field("user", s.isolation.user.to_string());
        field("limits", limits_text(&s.limits));
        if let Some(profile) = &s.profile {
            field("profile", profile.clone());
        }
        field("env", list_or_dash(&env));
        field("secrets", list_or_dash(&s.secrets));
        if !s.runs_on.is_empty() {
            field("runs_on", s.runs_on.join(", "));
        }
        field("workdir", s.workdir.clone());
        match cache.get(pos) {
            Some(view) if view.status == CacheStatus::Cached => {
                let key = view.key.map(|k| k.digest().short());
                let from = super::cache::source_text(view.source.unwrap_or(crate::events::CacheSource::Local));
                field("cache", format!("cached from the {from} (key {})", key.as_deref().unwrap_or("-")))
            }
            Some(view) => field("cache", format!("run: {}", view.reasons.join("; "))),
            None => field("cache", if s.cache { "on".into() } else { "off (cache: false)".into() }),
        }
    }
    out
}

/// The plan as JSON for tools: `{"workflow": name, "steps": [{"name", "key", "status", "source",
/// "reasons", "needs", "image", ...}]}` (`key`/`status`/`source`/`reasons` only when `cache` has
/// a view per step; `source` is `local` or `remote` for a cached step, else null).
/// Like [`render_text`], only the names of env variables and secrets.
pub fn to_json(plan: &Plan, cache: &[CacheView]) -> serde_json::Value {
    let steps: Vec<serde_json::Value> = plan
        .steps
        .iter()
        .enumerate()
        .map(|(pos, planned)| {
            let s = &planned.step;
            let needs: Vec<&str> = planned.needs.iter().map(|&i| plan.steps[i].step.name.as_str()).collect();
            let (run, command) = match &s.command {
                dsl::Command::Shell(script) => (serde_json::json!(script), serde_json::Value::Null),
                dsl::Command::Argv(argv) => (serde_json::Value::Null, serde_json::json!(argv)),
            };
            let mut value = serde_json::json!({
                "name": s.name,
                "needs": needs,
                "image": s.image,
                "run": run,
                "command": command,
                "inputs": s.inputs,
                "outputs": s.outputs,
                "network": s.isolation.network.as_str(),
                "user": s.isolation.user.to_string(),
                "limits": s.limits,
                "profile": s.profile,
                "env": s.env.keys().collect::<Vec<_>>(),
                "secrets": s.secrets,
                "runs_on": s.runs_on,
                "workdir": s.workdir,
                "cache": s.cache,
            });
            if let (Some(view), Some(obj)) = (cache.get(pos), value.as_object_mut()) {
                obj.insert("key".into(), serde_json::json!(view.key));
                obj.insert("status".into(), serde_json::json!(view.status));
                obj.insert("source".into(), serde_json::json!(view.source));
                obj.insert("reasons".into(), serde_json::json!(view.reasons));
            }
            value
        })
        .collect();
    serde_json::json!({ "workflow": plan.workflow.name, "steps": steps })
}

/// A DOT string literal: names may contain `-`, `.`, quotes or backslashes.
fn dot_quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The plan's graph in Graphviz DOT (`engine graph --format dot`); edges point from a step to the
/// steps that need it, nodes and edges in plan order.
pub fn to_dot(plan: &Plan) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "digraph {} {{", dot_quote(&plan.workflow.name));
    let _ = writeln!(out, "  rankdir=LR;");
    let _ = writeln!(out, "  node [shape=box];");
    for planned in &plan.steps {
        let _ = writeln!(out, "  {};", dot_quote(&planned.step.name));
    }
    for planned in &plan.steps {
        for &need in &planned.needs {
            let _ = writeln!(out, "  {} -> {};", dot_quote(&plan.steps[need].step.name), dot_quote(&planned.step.name));
        }
    }
    out.push_str("}\n");
    out
}

/// The plan's graph as a Mermaid flowchart (`engine graph --format mermaid`). Node ids are
/// positions (`s0`, `s1`...) because Mermaid ids cannot hold every character a step name may;
/// the names are quoted labels.
pub fn to_mermaid(plan: &Plan) -> String {
    let mut out = String::from("flowchart LR\n");
    for (i, planned) in plan.steps.iter().enumerate() {
        let label = planned.step.name.replace('"', "#quot;");
        let _ = writeln!(out, "  s{i}[\"{label}\"]");
    }
    for (i, planned) in plan.steps.iter().enumerate() {
        for &need in &planned.needs {
            let _ = writeln!(out, "  s{need} --> s{i}");
        }
    }
    out
}

/// `engine plan`: the plan as text or as one line of JSON, on stdout.
pub fn print(plan: &Plan, cache: &[CacheView], format: OutputFormat) {
    match format {
        OutputFormat::Plain => print!("{}", render_text(plan, cache)),
        OutputFormat::Json => println!("{}", to_json(plan, cache)),
    }
}

/// `engine graph`: the plan's DAG as DOT or Mermaid, on stdout.
pub fn print_graph(plan: &Plan, format: GraphFormat) {
    match format {
        GraphFormat::Dot => print!("{}", to_dot(plan)),
        GraphFormat::Mermaid => print!("{}", to_mermaid(plan)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::plan;
    use crate::plan::test_support::{step, workflow};

    const BIG: crate::budget::HostBudget = crate::budget::HostBudget { millicpus: 64_000, memory: 256 << 30 };

    fn all(wf: std::sync::Arc<dsl::Workflow>) -> Plan {
        plan(wf, &[], BIG).unwrap()
    }

    /// A workflow with every kind of setting, and names that need quoting in DOT and Mermaid.
    fn rich() -> Plan {
        let mut compile = step("compile");
        compile.image = dsl::ImageRef::Built("toolchain".into());
        compile.command = dsl::Command::Shell("make\nmake check".into());
        compile.inputs = vec!["src/**".into(), "Makefile".into()];
        compile.outputs = vec!["build/app".into()];
        compile.env.insert("CC".into(), "gcc".into());
        compile.env.insert("LANG".into(), "C.UTF-8".into());
        let mut test = step("unit-test.x86");
        test.needs = vec!["compile".into()];
        test.command = dsl::Command::Argv(vec!["./build/app".into(), "--self-test".into()]);
        test.limits.timeout = std::time::Duration::from_secs(30);
        let mut scan = step("scan");
        scan.needs = vec!["compile".into()];
        scan.profile = Some("sandbox".into());
        scan.limits = dsl::Limits::sandbox();
        scan.secrets = vec!["API_TOKEN".into()];
        scan.runs_on = vec!["gpu".into(), "x86_64".into()];
        scan.env.insert("API_URL".into(), "https://secret.example".into());
        scan.cache = false;
        scan.isolation.network = dsl::Network::Bridge;
        scan.isolation.user = dsl::User { uid: 0, gid: 0 };
        scan.workdir = "/workspace/build".into();
        let mut join = step("say \"done\"");
        join.needs = vec!["unit-test.x86".into(), "scan".into()];
        all(workflow("my-pipeline").with(compile).with(test).with(scan).with(join).build())
    }

    #[test]
    fn text_rendering() {
        let text = render_text(&rich(), &[]);
        assert!(!text.contains("gcc") && !text.contains("secret.example"), "env values leaked");
        insta::assert_snapshot!(text);
    }

    #[test]
    fn json_rendering() {
        let json = to_json(&rich(), &[]);
        assert!(!json.to_string().contains("secret.example"), "env values leaked");
        insta::assert_json_snapshot!(json);
    }

    #[test]
    fn cache_views_say_where_a_cached_step_comes_from() {
        use crate::events::CacheSource;
        let plan = rich();
        let key = Some(cache::ActionKey::from_digest(cache::Digest::of(b"k")));
        let view = |status, source| CacheView { status, source, key, reasons: Vec::new() };
        let views = vec![
            view(CacheStatus::Cached, Some(CacheSource::Local)),
            view(CacheStatus::Cached, Some(CacheSource::Remote)),
            CacheView { reasons: vec!["never run".into()], ..view(CacheStatus::Run, None) },
            CacheView { reasons: vec!["never run".into()], ..view(CacheStatus::Run, None) },
        ];
        let text = render_text(&plan, &views);
        assert!(text.contains("cache:   cached from the local store (key "), "{text}");
        assert!(text.contains("cache:   cached from the remote cache (key "), "{text}");
        let json = to_json(&plan, &views);
        let sources: Vec<&serde_json::Value> = json["steps"].as_array().unwrap().iter().map(|s| &s["source"]).collect();
        assert_eq!(
            sources,
            [&serde_json::json!("local"), &serde_json::json!("remote"), &serde_json::Value::Null, &serde_json::Value::Null]
        );
    }

    #[test]
    fn dot_rendering() {
        insta::assert_snapshot!(to_dot(&rich()));
    }

    #[test]
    fn mermaid_rendering() {
        insta::assert_snapshot!(to_mermaid(&rich()));
    }
}
