//! Hostile workflow files against both front ends: nesting and expansion bombs, imports that
//! reach out of the project, and the bounds of docs/workflow.md ("Validation rules"). The
//! proptests generate bombs; `PROPTEST_CASES` sets how many (default 16 per property, well under
//! a minute in CI; run e.g. `PROPTEST_CASES=2000 cargo test -p dsl --test bombs` for a long
//! fuzzing session).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use dsl::LoadError;
use proptest::prelude::*;

/// Each diagnostic's one-line form (`file:line:col: message`).
fn messages(e: &LoadError) -> String {
    match e {
        LoadError::Invalid { diagnostics, .. } => diagnostics.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n"),
        other => other.to_string(),
    }
}

fn errors(name: &str, text: &str) -> String {
    common::errors(name, text)
}

/// Every diagnostic has a real place (line and column from 1).
fn assert_placed(e: &LoadError) {
    match e {
        LoadError::Invalid { diagnostics, .. } => {
            assert!(!diagnostics.is_empty(), "an Invalid error without diagnostics");
            for d in diagnostics {
                assert!(d.span.line >= 1 && d.span.col >= 1, "no place: {d}");
            }
        }
        LoadError::Io { .. } | LoadError::PolicyIo { .. } => {}
    }
}

/// Loads `text` as `name` within `limit`, never panicking; errors must be placed.
fn load_bounded(name: &str, text: &str, limit: Duration) -> Result<(), String> {
    let start = Instant::now();
    let r = dsl::load_str(Path::new(name), text);
    let took = start.elapsed();
    if took > limit {
        return Err(format!("{name}: {} bytes took {took:?}", text.len()));
    }
    if let Err(e) = &r {
        assert_placed(e);
    }
    Ok(())
}

#[test]
fn nesting_limits_in_both_syntaxes() {
    let wf = format!("version 1\nstep s {{ image \"i\" run \"x\" env {}1{} }}\n", "{ k ".repeat(70), "}".repeat(70));
    insta::assert_snapshot!(errors("deep.wf", &wf));
    let yaml = format!("version: 1\nsteps:\n  s: {{ image: i, run: x, env: {}{} }}\n", "[".repeat(70), "]".repeat(70));
    insta::assert_snapshot!(errors("deep.yml", &yaml));
    // 64 levels are fine for the parsers (the resolver then says what it expected).
    let ok = format!("version: 1\nsteps:\n  s: {{ image: i, run: x, env: {{ a: {}{} }} }}\n", "[".repeat(58), "]".repeat(58));
    assert!(!errors("ok.yml", &ok).contains("nesting deeper"));
}

#[test]
fn matrix_and_step_count_limits() {
    insta::assert_snapshot!(errors(
        "m.wf",
        "version 1\nstep s[a in [\"1\", \"2\", \"3\", \"4\", \"5\", \"6\", \"7\", \"8\", \"9\", \"10\"], b in [\"1\", \"2\", \"3\", \"4\", \"5\", \"6\", \"7\", \"8\", \"9\", \"10\"], c in [\"1\", \"2\", \"3\", \"4\", \"5\", \"6\", \"7\", \"8\", \"9\", \"10\"], d in [\"1\", \"2\", \"3\", \"4\", \"5\", \"6\", \"7\", \"8\", \"9\", \"10\"], e in [\"1\", \"2\"]] { image \"i\" run \"x\" }\n"
    ));
    let steps: String = (0..10_001).map(|i| format!("  s{i}: {{ image: i, run: x }}\n")).collect();
    let out = errors("many.yml", &format!("version: 1\nsteps:\n{steps}"));
    assert!(out.contains("many.yml:3:5: the workflow has 10001 steps, more than the maximum of 10000"), "{}", &out[..out.len().min(2000)]);
}

#[test]
fn matrix_values_copied_into_every_combination_count_towards_the_expansion_limit() {
    // 100 x 40 combinations each holding copies of a 20 KB bare word: 160 MB from 800 KB.
    let small: Vec<String> = (0..100).map(|i| i.to_string()).collect();
    let big: Vec<String> = (0..40).map(|i| format!("w{i}{}", "x".repeat(20_000))).collect();
    let text = format!("version 1\nstep s[a in [{}], b in [{}]] {{ image \"i\" run \"x\" }}\n", small.join(", "), big.join(", "));
    let start = Instant::now();
    let e = dsl::load_str(Path::new("m.wf"), &text).unwrap_err();
    assert!(start.elapsed() < LIMIT, "took {:?}", start.elapsed());
    let m = messages(&e);
    assert!(m.starts_with("m.wf:2:") && m.contains("the workflow expands to more than 64 MiB"), "{}", &m[..m.len().min(2000)]);
    let axes: Vec<String> = (0..17).map(|i| format!("a{i} in [\"1\"]")).collect();
    let out = errors("a.wf", &format!("version 1\nstep s[{}] {{ image \"i\" run \"x\" }}\n", axes.join(", ")));
    assert!(out.contains("a.wf:2:222: the matrix of step `s` has 17 axes, more than the maximum of 16"), "{out}");
}

#[test]
fn expansion_limit_points_at_the_parameter_that_went_over() {
    let uses = vec!["\"${p}\""; 2000].join(", ");
    let text = format!("version 1\ntemplate t(p) {{ image \"i\" run \"x\" inputs {uses} }}\nstep s[n in [\"1\", \"2\", \"3\", \"4\", \"5\", \"6\", \"7\", \"8\", \"9\", \"10\"]] = t(\"{}\")\n", "x".repeat(8000));
    let out = errors("t.wf", &text);
    assert!(out.contains("t.wf:2:"), "{}", &out[..out.len().min(2000)]);
    assert!(out.contains("the workflow expands to more than 64 MiB"), "{}", &out[..out.len().min(2000)]);
}

#[test]
fn users_limits_names_and_paths() {
    insta::assert_snapshot!(errors(
        "bounds.yml",
        &format!(
            "version: 1\ndefaults: {{ image: i }}\nsteps:\n  a: {{ run: x, user: \"1000:0\" }}\n  b: {{ run: x, user: \"0:1000\" }}\n  c: {{ run: x, user: \"2147483646:2147483647\" }}\n  d: {{ run: x, user: \"-1\" }}\n  e:\n    run: x\n    limits: {{ timeout: 8d, cpus: 1024.001, memory: 1025g, pids: 4194305 }}\n    outputs: [\".\", \"./\", \"a//b\", \"~/x\", \"./c/\", \"ok/\"]\n    inputs: [\"src//*.rs\", \"~\"]\n  {}: {{ run: x }}\n",
            "n".repeat(129)
        )
    ));
    // The largest values are accepted.
    let wf = common::load(
        "max.yml",
        "version: 1\nsteps:\n  a:\n    image: i\n    run: x\n    user: \"2147483646:2147483646\"\n    limits: { timeout: 7d, cpus: 1024, memory: 1t, pids: 4194304, tmpfs: 64g, workspace: 16t, outputs: 16t }\n    outputs: [ok/, a/b]\n",
    );
    assert_eq!(wf.steps[0].isolation.user.uid, 2_147_483_646);
}

#[test]
fn workflow_names_are_bounded() {
    let out = errors("w.yml", &format!("version: 1\nname: {}\nsteps:\n  a: {{ image: i, run: x }}\n", "n".repeat(129)));
    assert!(out.contains("w.yml:2:7: invalid workflow name: 129 characters"), "{out}");
    let out = errors("w.yml", "version: 1\nname: \"a\\nb\"\nsteps:\n  a: { image: i, run: x }\n");
    assert!(out.contains("invalid workflow name: 3 characters, with control characters"), "{out}");
}

#[test]
fn root_group_is_allowed_when_the_policy_allows_root() {
    let policy = dsl::Policy::load_str(Path::new("p.yml"), "version: 1\nallow_root: true\n").unwrap();
    dsl::load_str_with(
        Path::new("w.yml"),
        "version: 1\nsteps:\n  a: { image: i, run: x, user: \"1000:0\" }\n",
        &policy,
        &dsl::FsLoader::for_workflow(Path::new("w.yml")),
    )
    .unwrap();
}

#[test]
fn many_diagnostics_in_a_large_file_stay_cheap_and_capped() {
    // 20,000 unknown keys in a 1 MiB file: every diagnostic used to copy the whole file.
    let keys: String = (0..20_000).map(|i| format!("    bad{i}: {}\n", "v".repeat(40))).collect();
    let text = format!("version: 1\nsteps:\n  s:\n    image: i\n    run: x\n{keys}");
    let start = Instant::now();
    let e = dsl::load_str(Path::new("w.yml"), &text).unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(20), "took {:?}", start.elapsed());
    let LoadError::Invalid { diagnostics, .. } = &e else { panic!("{e}") };
    assert_eq!(diagnostics.len(), 101);
    assert!(diagnostics[100].message.contains("and at least 900 more errors, not shown"), "{}", diagnostics[100]);
    // The excerpt still shows the right line numbers, far into the file.
    let keys: String = (0..3000).map(|i| format!("      K{i}: {}\n", "v".repeat(40))).collect();
    let text = format!("version: 1\nsteps:\n  s:\n    image: i\n    run: x\n    env:\n{keys}      1bad: x\n");
    let out = errors("w.yml", &text);
    assert!(out.contains("w.yml:3007:7: invalid environment variable name `1bad`"), "{out}");
    assert!(out.contains(" 3007 |       1bad: x"), "{out}");
    assert!(out.contains(" 3006 |       K2999:"), "{out}");
}

#[test]
fn a_step_needing_thousands_of_steps_is_checked_in_linear_time() {
    // Output collisions used to be checked pair by pair of needs: 4.5M pairs for 3000 needs.
    let n = 5000;
    let mut text = String::from("version: 1\ndefaults: { image: i }\nsteps:\n");
    for i in 0..n {
        text.push_str(&format!("  s{i}: {{ run: x, outputs: [o{i}/] }}\n"));
    }
    text.push_str("  late: { run: x, outputs: [o17/deep] }\n");
    let needs: Vec<String> = (0..n).map(|i| format!("s{i}")).collect();
    text.push_str(&format!("  all: {{ run: x, needs: [{}, late] }}\n", needs.join(", ")));
    let start = Instant::now();
    let out = errors("w.yml", &text);
    assert!(start.elapsed() < Duration::from_secs(10), "took {:?}", start.elapsed());
    let e = dsl::load_str(Path::new("w.yml"), &text).unwrap_err();
    assert_eq!(
        messages(&e),
        format!("w.yml:{}:29: an output path claimed by two steps that meet in one /workspace: `o17/deep` of step `late` overlaps `o17/` of step `s17` (both needed by `all`)", n + 4),
        "{out}"
    );
}

mod imports {
    use super::*;
    use std::os::unix::fs::symlink;

    fn load(dir: &Path, main: &str) -> String {
        let path = dir.join("main.wf");
        std::fs::write(&path, main).unwrap();
        match dsl::load_file(&path) {
            Ok(_) => panic!("loaded"),
            Err(e) => messages(&e).replace(&format!("{}/", dir.display()), ""),
        }
    }

    #[test]
    fn refused_imports_are_never_read_or_quoted() {
        let host = tempfile::tempdir().unwrap();
        let secret = host.path().join("secret.wf");
        std::fs::write(&secret, "SECRET-LINE-1 {\n").unwrap();
        let dir = tempfile::tempdir().unwrap();
        symlink(&secret, dir.path().join("link.wf")).unwrap();
        let fifo = dir.path().join("fifo.wf");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        std::fs::write(dir.path().join("big.wf"), format!("#{}\n", "x".repeat(1 << 20))).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "template t() {}\n").unwrap();
        let out = load(
            dir.path(),
            &format!(
                "version 1\nimport \"{}\" as a\nimport \"link.wf\" as b\nimport \"fifo.wf\" as c\nimport \"big.wf\" as d\nimport \"notes.txt\" as e\nimport \"sub/../../x.wf\" as f\nstep s {{ image \"i\" run \"x\" }}\n",
                secret.display()
            ),
        );
        assert!(!out.contains("SECRET-LINE"), "{out}");
        for expect in [
            "main.wf:2:1: cannot import",
            "it leaves the workflow's folder",
            "main.wf:3:1: cannot import `link.wf`: it leaves the workflow's folder",
            "main.wf:4:1: cannot read imported file `fifo.wf`: not a regular file",
            "main.wf:5:1: cannot read imported file `big.wf`: larger than the maximum of 1 MiB",
            "main.wf:6:1: cannot import `notes.txt`: only `.wf` files can be imported",
            "main.wf:7:1: cannot read imported file `sub/../../x.wf`",
        ] {
            assert!(out.contains(expect), "{expect}:\n{out}");
        }
    }

    #[test]
    fn an_expansion_bomb_in_an_imported_template_points_into_the_library() {
        let dir = tempfile::tempdir().unwrap();
        let uses = vec!["\"${p}\""; 2000].join(", ");
        std::fs::write(dir.path().join("lib.wf"), format!("template t(p) {{ image \"i\" run \"x\" inputs {uses} }}\n")).unwrap();
        let values: Vec<String> = (0..10).map(|i| format!("\"{i}\"")).collect();
        let out = load(
            dir.path(),
            &format!("version 1\nimport \"lib.wf\" as l\nstep s[n in [{}]] = l.t(\"{}\")\n", values.join(", "), "x".repeat(8000)),
        );
        assert!(out.contains("lib.wf:1:"), "{}", &out[..out.len().min(2000)]);
        assert!(out.contains("the workflow expands to more than 64 MiB"), "{}", &out[..out.len().min(2000)]);
    }

    #[test]
    fn import_chains_and_counts_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..12 {
            std::fs::write(
                dir.path().join(format!("l{i}.wf")),
                format!("import \"l{}.wf\" as n\ntemplate t{i}() {{ run \"x\" }}\n", i + 1),
            )
            .unwrap();
        }
        std::fs::write(dir.path().join("l12.wf"), "template t() { run \"x\" }\n").unwrap();
        let out = load(dir.path(), "version 1\nimport \"l0.wf\" as l\nstep s { image \"i\" run \"x\" }\n");
        assert!(out.contains("imports nested deeper than 8 levels"), "{out}");
        let imports: String = (0..65).map(|i| format!("import \"l12.wf\" as a{i}\n")).collect();
        let out = load(dir.path(), &format!("version 1\n{imports}step s {{ image \"i\" run \"x\" }}\n"));
        assert!(out.contains("main.wf:66:1: cannot import `l12.wf`: more than 64 imported files"), "{out}");
        // Inside the folder, through a symlink that stays inside, is fine.
        symlink(dir.path().join("l12.wf"), dir.path().join("alias.wf")).unwrap();
        let path = dir.path().join("ok.wf");
        std::fs::write(&path, "version 1\nimport \"alias.wf\" as a\nstep s = a.t() { image \"i\" }\n").unwrap();
        dsl::load_file(&path).unwrap();
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(16)
}

/// Generous for a debug build on a shared machine; the bombs take milliseconds.
const LIMIT: Duration = Duration::from_secs(10);

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// Deep `{`/`[` in `.wf`, unbalanced or not.
    #[test]
    fn wf_nesting_bombs(depth in 1usize..3000, brackets in "[\\{\\[]{1,8}", close in any::<bool>()) {
        let open: String = brackets.chars().cycle().take(depth).map(|c| if c == '{' { "{ k ".to_string() } else { "[".to_string() }).collect();
        let shut: String = if close { open.chars().rev().filter_map(|c| match c { '{' => Some('}'), '[' => Some(']'), _ => None }).collect() } else { String::new() };
        let text = format!("version 1\nstep s {{ image \"i\" run \"x\" env {open}\"v\"{shut} }}\n");
        prop_assert_eq!(load_bounded("w.wf", &text, LIMIT), Ok(()));
    }

    /// Deep YAML, in flow and block style, mappings and sequences.
    #[test]
    fn yaml_nesting_bombs(depth in 1usize..2000, flow in any::<bool>(), seq in any::<bool>()) {
        let text = if flow {
            let (o, c) = if seq { ("[", "]") } else { ("{a: ", "}") };
            format!("version: 1\nsteps:\n  s: {{ image: i, run: x, env: {}v{} }}\n", o.repeat(depth), c.repeat(depth))
        } else {
            let mut t = String::from("version: 1\nsteps:\n  s:\n    image: i\n    run: x\n    env:\n");
            for i in 0..depth {
                let pad = " ".repeat(6 + 2 * i);
                t.push_str(&if seq { format!("{pad}- \n") } else { format!("{pad}k{i}:\n") });
            }
            t
        };
        prop_assert_eq!(load_bounded("w.yml", &text, LIMIT), Ok(()));
    }

    /// Matrices whose product explodes, with templates instantiated per combination.
    #[test]
    fn matrix_and_template_bombs(axes in proptest::collection::vec(1usize..60, 1..8), uses in 1usize..3000, arg in 1usize..50_000) {
        let matrix: Vec<String> = axes.iter().enumerate().map(|(i, n)| {
            format!("a{i} in [{}]", (0..*n).map(|v| format!("\"{v}\"")).collect::<Vec<_>>().join(", "))
        }).collect();
        let body = vec!["\"${p}\""; uses].join(", ");
        let text = format!(
            "version 1\ntemplate t(p) {{ image \"i\" run \"x\" inputs {body} }}\nstep s[{}] = t(\"{}\")\n",
            matrix.join(", "),
            "x".repeat(arg)
        );
        prop_assert_eq!(load_bounded("w.wf", &text, LIMIT), Ok(()));
    }

    /// "Billion laughs": chains of anchors and aliases never expand.
    #[test]
    fn yaml_alias_chains(levels in 1usize..12, fanout in 1usize..12) {
        let mut text = String::from("version: 1\na0: &a0 [lol]\n");
        for i in 1..levels {
            text.push_str(&format!("a{i}: &a{i} [{}]\n", vec![format!("*a{}", i - 1); fanout].join(", ")));
        }
        text.push_str("steps:\n  s: { image: i, run: x }\n");
        let e = dsl::load_str(Path::new("w.yml"), &text).unwrap_err();
        prop_assert!(e.to_string().contains("1 error"), "{}", e);
        prop_assert_eq!(load_bounded("w.yml", &text, LIMIT), Ok(()));
    }

    /// Many keys in one block load in linear time (the quadratic lookups are gone).
    #[test]
    fn wide_blocks(keys in 1usize..10_000, wf in any::<bool>()) {
        let text = if wf {
            let body: String = (0..keys).map(|i| format!("  K{i} \"v\"\n")).collect();
            format!("version 1\nstep s {{\nimage \"i\"\nrun \"x\"\nenv {{\n{body}}}\n}}\n")
        } else {
            let body: String = (0..keys).map(|i| format!("    K{i}: v\n")).collect();
            format!("version: 1\nsteps:\n  s:\n    image: i\n    run: x\n    env:\n{body}")
        };
        prop_assert_eq!(load_bounded(if wf { "w.wf" } else { "w.yml" }, &text, LIMIT), Ok(()));
    }
}
