//! Hostile cases: dsl_bombs. Workflow files built to hurt the loader: expansion and nesting
//! bombs, imports reaching out of the project (host files, devices, FIFOs), names and paths the
//! run cannot handle, users in group root, limits no host can honour. Each must be refused by
//! `engine check` and `engine run` alike, with exit 2, a message at file:line:col, quickly, and
//! without a byte of a refused file in the output.

use std::os::unix::fs::symlink;
use std::time::Duration;

#[allow(unused_imports)]
use crate::common::{hostile::*, *};

/// Every case must be refused this fast (the debug binary, on a loaded machine).
const QUICK: Duration = Duration::from_secs(5);

/// Runs `engine check FILE` and `engine run FILE`: both exit 2 within `within`, and the errors
/// contain every `expect`. Returns the errors of `run`.
fn refused_within(p: &Project, file: &str, expect: &[&str], within: Duration) -> String {
    let mut err = String::new();
    for command in ["check", "run"] {
        // CPU time, not wall time: the bound is on the work, whatever else runs beside the test.
        let (o, took) = p.run_cpu_timed(&[command, file]);
        err = unwrap_lines(&text(&o.stderr));
        assert_eq!(code(&o), 2, "`engine {command} {file}` exit code; stderr:\n{}", cut(&err));
        for e in expect {
            assert!(err.contains(e), "`engine {command} {file}` should say `{e}`:\n{}", cut(&err));
        }
        assert!(took < within, "`engine {command} {file}` took {took:?} of CPU, more than {within:?}");
        assert!(!err.contains("panicked") && !err.contains("RUST_BACKTRACE"), "a panic:\n{}", cut(&err));
    }
    err
}

fn refused(p: &Project, file: &str, expect: &[&str]) -> String {
    refused_within(p, file, expect, QUICK)
}

/// The rendering wraps long messages at 100 columns (continuation lines start with `| `): one
/// line per message again, so that expectations read as the messages are written.
fn unwrap_lines(s: &str) -> String {
    let mut out = String::new();
    for line in s.lines() {
        match line.trim_start().strip_prefix("| ") {
            Some(rest) if !out.is_empty() => {
                out.pop();
                out.push(' ');
                out.push_str(rest);
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Error output can quote a long line: keep assertion messages readable.
fn cut(s: &str) -> String {
    s.lines().map(|l| l.chars().take(200).collect::<String>()).collect::<Vec<_>>().join("\n")
}

fn project_wf(text: &str) -> Project {
    let p = Project::new("version: 1\nsteps: {}\n");
    p.write("workflow.wf", text);
    p
}

// --- 4: users ----------------------------------------------------------------------------------

#[test]
fn group_root_and_out_of_range_ids_are_refused_at_load() {
    let host = Host::new();
    let p = Project::new(&format!(
        "version: 1\ndefaults: {{ image: {IMAGE} }}\nsteps:\n  a: {{ run: id, user: \"1000:0\" }}\n  b: {{ run: id, user: \"4294967295:0\" }}\n  c: {{ run: id, user: \"1000:root\" }}\n  d: {{ run: id, user: \"00\" }}\n  e: {{ run: id, user: \"+0\" }}\n  f: {{ run: id, user: \"2147483647\" }}\n"
    ));
    refused(
        &p,
        "workflow.yml",
        &[
            "workflow.yml:4:23: step `a` asks to run with group root (gid 0), which is not allowed",
            "workflow.yml:5:23: user `4294967295:0` is out of range",
            "workflow.yml:6:23: invalid user `1000:root`",
            "workflow.yml:7:23: step `d` asks to run as root (uid 0), which is not allowed",
            "workflow.yml:8:23: invalid user `+0`",
            "workflow.yml:9:23: user `2147483647` is out of range",
        ],
    );
    // The same refusal when the operator's policy says it in so many words.
    p.write("policy.yml", "version: 1\nallow_root: false\n");
    let o = p.run(&["check", "--policy", "policy.yml"]);
    assert_eq!(code(&o), 2);
    assert!(text(&o.stderr).contains("group root (gid 0)"), "{}", text(&o.stderr));
    assert_nothing_escaped(&p, &host, &[]);
}

// --- 6: imports --------------------------------------------------------------------------------

#[test]
fn imports_of_host_files_devices_and_fifos_are_refused_without_reading_them() {
    let host = Host::new();
    let secret = host.secret_path();
    let p = project_wf("");
    // A host file by absolute path, by `..`, and through a symlink dressed as a module.
    symlink(&secret, p.path().join("lib.wf")).unwrap();
    symlink("/dev/zero", p.path().join("zero.wf")).unwrap();
    let fifo = p.path().join("fifo.wf");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    p.write("big.wf", &format!("# {}\n", "x".repeat(2 << 20)));
    let rel = pathdiff(&secret, p.path());
    p.write(
        "workflow.wf",
        &format!(
            "version 1\nimport \"{}\" as a\nimport \"{rel}\" as b\nimport \"lib.wf\" as c\nimport \"zero.wf\" as d\nimport \"fifo.wf\" as e\nimport \"big.wf\" as f\nimport \"/dev/zero\" as g\nstep s {{ image \"{IMAGE}\" run \"true\" }}\n",
            secret.display()
        ),
    );
    let err = refused(
        &p,
        "workflow.wf",
        &[
            "workflow.wf:2:1: cannot import",
            "only `.wf` files can be imported",
            "workflow.wf:4:1: cannot import `lib.wf`: it leaves the workflow's folder",
            "workflow.wf:5:1: cannot import `zero.wf`: it leaves the workflow's folder",
            "workflow.wf:6:1: cannot read imported file `fifo.wf`: not a regular file",
            "workflow.wf:7:1: cannot read imported file `big.wf`: larger than the maximum of 1 MiB",
            "workflow.wf:8:1: cannot import `/dev/zero`: only `.wf` files can be imported",
        ],
    );
    assert!(!err.contains(HOST_MARKER) && !err.contains("second line"), "a refused file was quoted:\n{}", cut(&err));
    assert_nothing_escaped(&p, &host, &[]);
}

/// `rel` from `base` to `target` with `..` (both absolute).
fn pathdiff(target: &std::path::Path, base: &std::path::Path) -> String {
    let depth = base.components().count() - 1;
    format!("{}{}", "../".repeat(depth), target.strip_prefix("/").unwrap().display())
}

#[test]
fn a_fifo_device_or_oversized_workflow_file_is_refused_not_read() {
    let host = Host::new();
    let p = project_wf("");
    let fifo = p.path().join("fifo.wf");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    refused(&p, "fifo.wf", &["cannot read workflow file fifo.wf: not a regular file"]);
    refused(&p, "/dev/zero", &["cannot read workflow file /dev/zero: not a regular file"]);
    let big = format!("version: 1\n#{}\n", "x".repeat(17 << 20));
    p.write("big.yml", &big);
    refused(&p, "big.yml", &["cannot read workflow file big.yml: larger than the maximum of 16 MiB"]);
    assert_nothing_escaped(&p, &host, &[]);
}

// --- 12: bombs ---------------------------------------------------------------------------------

#[test]
fn a_matrix_of_a_billion_steps_is_refused_before_it_is_built() {
    let host = Host::new();
    let values = format!("[{}]", (0..32).map(|i| format!("\"v{i}\"")).collect::<Vec<_>>().join(", "));
    let axes: Vec<String> = ["a", "b", "c", "d", "e", "f"].iter().map(|n| format!("{n} in {values}")).collect();
    let p = project_wf(&format!("version 1\nstep s[{}] {{ image \"{IMAGE}\" run \"true\" }}\n", axes.join(", ")));
    refused(
        &p,
        "workflow.wf",
        &["workflow.wf:2:8: the matrix of step `s` expands to 1073741824 steps (32 x 32 x 32 x 32 x 32 x 32), more than the maximum of 10000"],
    );
    // Many declarations that each stay under the cap add up too.
    let axis = format!("[{}]", (0..100).map(|i| format!("\"{i}\"")).collect::<Vec<_>>().join(", "));
    let decls: String = (0..2).map(|i| format!("step s{i}[a in {axis}, b in {axis}] {{ image \"{IMAGE}\" run \"true\" }}\n")).collect();
    p.write("workflow.wf", &format!("version 1\n{decls}"));
    refused(&p, "workflow.wf", &["workflow.wf:3:6: the workflow declares more than 10000 steps"]);
    assert_nothing_escaped(&p, &host, &[]);
}

#[test]
fn a_template_expansion_bomb_is_refused_at_the_expansion_limit() {
    let host = Host::new();
    // 180 KB of text that would expand to about 2 GB: a 90 KB argument used 20,000 times.
    let uses = vec!["\"${p}\""; 20_000].join(", ");
    let p = project_wf(&format!(
        "version 1\ntemplate t(p) {{ image \"{IMAGE}\" run \"true\" inputs {uses} }}\nstep s = t(\"{}\")\n",
        "x".repeat(90_000)
    ));
    refused(&p, "workflow.wf", &["the workflow expands to more than 64 MiB (templates and matrices multiply text)", "workflow.wf:2:"]);
    assert_nothing_escaped(&p, &host, &[]);
}

#[test]
fn deep_nesting_is_refused_before_the_parsers_recurse() {
    let host = Host::new();
    let p =
        project_wf(&format!("version 1\nstep s {{ image \"{IMAGE}\" run \"true\" env {}1{} }}\n", "{ k ".repeat(8000), "}".repeat(8000)));
    refused(&p, "workflow.wf", &["workflow.wf:2:301: nesting deeper than 64 levels"]);
    let mut yaml = format!("version: 1\nsteps:\n  s:\n    image: {IMAGE}\n    run: \"true\"\n    env:\n");
    for i in 0..3000 {
        yaml.push_str(&format!("{}k{i}:\n", " ".repeat(6 + 2 * i)));
    }
    p.write("block.yml", &yaml);
    refused(&p, "block.yml", &["block.yml:68:", "nesting deeper than 64 levels"]);
    p.write("flow.yml", &format!("version: 1\nsteps:\n  s: {{ image: x, run: y, env: {}{} }}\n", "[".repeat(20_000), "]".repeat(20_000)));
    refused(&p, "flow.yml", &["flow.yml:3:"]);
    p.write(
        "list.wf",
        &format!("version 1\nstep s {{ image \"{IMAGE}\" run \"true\" inputs {}\"a\"{} }}\n", "[".repeat(5000), "]".repeat(5000)),
    );
    refused(&p, "list.wf", &["list.wf:2:", "nesting deeper than 64 levels"]);
    assert_nothing_escaped(&p, &host, &[]);
}

#[test]
fn yaml_aliases_never_expand() {
    let host = Host::new();
    let mut yaml = String::from("version: 1\nx0: &a0 [\"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\"]\n");
    for i in 1..10 {
        let prev = format!("*a{}", i - 1);
        yaml.push_str(&format!("x{i}: &a{i} [{}]\n", vec![prev; 9].join(", ")));
    }
    yaml.push_str(&format!("steps:\n  s: {{ image: {IMAGE}, run: \"true\" }}\n"));
    let p = Project::new(&yaml);
    refused(&p, "workflow.yml", &["workflow.yml:2:9: YAML anchors and aliases are not supported"]);
    assert_nothing_escaped(&p, &host, &[]);
}

#[test]
fn a_block_of_many_keys_loads_in_linear_time() {
    let host = Host::new();
    // 30,000 env keys in one block: the old per-node location lookup was quadratic in the file.
    let keys: String = (0..30_000).map(|i| format!("  K{i} \"{}\"\n", "v".repeat(20))).collect();
    let p = project_wf(&format!("version 1\nstep s {{\nimage \"{IMAGE}\"\nrun \"true\"\nenv {{\n{keys}}}\n}}\n"));
    let (o, cpu) = p.run_cpu_timed(&["check", "workflow.wf"]);
    assert_eq!(code(&o), 0, "{}", cut(&text(&o.stderr)));
    assert!(cpu < Duration::from_secs(10), "took {cpu:?} of CPU");
    // An environment no process could be started with is refused at load, not at the daemon.
    let keys: String = (0..30_000).map(|i| format!("  K{i} \"{}\"\n", "v".repeat(40))).collect();
    p.write("workflow.wf", &format!("version 1\nstep s {{\nimage \"{IMAGE}\"\nrun \"true\"\nenv {{\n{keys}}}\n}}\n"));
    refused_within(
        &p,
        "workflow.wf",
        &["workflow.wf:2:6: the environment of step `s` is", "more than the maximum of 1024 KiB"],
        Duration::from_secs(10),
    );
    assert_nothing_escaped(&p, &host, &[]);
}

// --- 13: names and paths -----------------------------------------------------------------------

#[test]
fn names_and_paths_the_run_cannot_handle_are_refused_by_check() {
    let host = Host::new();
    let long = "n".repeat(300);
    let almost = "m".repeat(250);
    let p = Project::new(&format!(
        "version: 1\ndefaults: {{ image: {IMAGE} }}\nsteps:\n  {long}: {{ run: \"true\" }}\n  {almost}: {{ run: \"true\" }}\n  o:\n    run: \"true\"\n    outputs: [\".\", \"a//b\", \"~/x\", \"./c\", \"{}\"]\n",
        "f".repeat(256)
    ));
    refused(
        &p,
        "workflow.yml",
        &[
            "workflow.yml:4:3: step name `nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn...` is 300 characters long, more than the maximum of 128",
            "workflow.yml:5:3: step name `mmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmm...` is 250 characters long",
            "workflow.yml:8:15: output path `.` names the whole folder",
            "workflow.yml:8:20: output path `a//b` has an empty component (`//`); write `a/b`",
            "workflow.yml:8:28: output path `~/x` starts with `~`",
            "workflow.yml:8:35: output path `./c` has a `.` component; write `c`",
            "has a file name longer than 255 bytes",
        ],
    );
    // Matrix names count after expansion.
    p.write("m.wf", &format!("version 1\nstep s[v in [\"{}\"]] {{ image \"{IMAGE}\" run \"true\" }}\n", "v".repeat(126)));
    refused(&p, "m.wf", &["m.wf:2:6: step name `", "is 129 characters long, more than the maximum of 128"]);
    assert_nothing_escaped(&p, &host, &[]);
}

#[test]
fn a_step_with_the_longest_name_runs_and_its_log_is_recorded() {
    let host = Host::new();
    let name = "n".repeat(128);
    let p = Project::new(&format!(
        "version: 1\ndefaults: {{ image: {IMAGE} }}\nsteps:\n  {name}:\n    run: mkdir -p out && echo long-name-log && echo x > out/f\n    outputs: [out/]\n"
    ));
    let o = p.run(&["run"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let logs: Vec<_> = walkdir::WalkDir::new(p.path().join(".engine/runs"))
        .into_iter()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(&format!("{name}.log")))
        .collect();
    assert_eq!(logs.len(), 1, "the step's log was not recorded");
    assert!(std::fs::read_to_string(logs[0].path()).unwrap().contains("long-name-log"));
    assert!(p.path().join(".engine/out").join(&name).join("out/f").is_file());
    assert_nothing_escaped(&p, &host, &[]);
}

// --- 14: limits --------------------------------------------------------------------------------

#[test]
fn limits_above_their_maxima_are_refused_at_their_line() {
    let host = Host::new();
    let p = Project::new(&format!(
        "version: 1\ndefaults: {{ image: {IMAGE} }}\nsteps:\n  a:\n    run: \"true\"\n    limits:\n      timeout: 500000000000h\n      cpus: 1025\n      memory: 2t\n      pids: 4194305\n      tmpfs: 65g\n      workspace: 17t\n      outputs: 17t\n"
    ));
    refused(
        &p,
        "workflow.yml",
        &[
            "workflow.yml:7:16: timeout 500000000000h is above the maximum of 7d",
            "workflow.yml:8:13: cpus 1025 is above the maximum of 1024",
            "workflow.yml:9:15: memory 2t is above the maximum of 1t",
            "workflow.yml:10:13: pids 4194305 is above the maximum of 4194304",
            "workflow.yml:11:14: tmpfs 65g is above the maximum of 64g",
            "workflow.yml:12:18: workspace 17t is above the maximum of 16t",
            "workflow.yml:13:16: outputs 17t is above the maximum of 16t",
        ],
    );
    assert_nothing_escaped(&p, &host, &[]);
}
