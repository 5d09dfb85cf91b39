//! Hostile cases: resources. What the engine itself spends on a step: disk (the workspace and
//! outputs limits), memory (inputs, outputs and logs streamed, never held whole), and symlink
//! chains in outputs that only leave /workspace once followed.

use std::process::Stdio;
use std::time::{Duration, Instant};

#[allow(unused_imports)]
use crate::common::{hostile::*, *};

/// Run `engine run` with `env`, stdout discarded; the exit code, stderr, and the engine's peak
/// resident memory in bytes (the kernel's own account, VmHWM).
fn run_measured(p: &Project, env: &[(&str, &str)]) -> (i32, String, u64) {
    let err = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = p.cmd(&["run"]);
    cmd.envs(env.iter().copied()).stdout(Stdio::null()).stderr(Stdio::from(err.reopen().unwrap()));
    let mut child = cmd.spawn().unwrap();
    // The engine's own high-water mark (VmHWM belongs to the process's memory since its exec),
    // read until it exits. Not `wait4`'s ru_maxrss: that keeps the high-water mark of the
    // process it was forked from (this test binary, large while other tests run), across exec.
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    let status = loop {
        if let Ok(status) = std::fs::read_to_string(&status_file) {
            let hwm = status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
            peak = peak.max(hwm.unwrap_or(0) * 1024);
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status.code().unwrap_or(-1), std::fs::read_to_string(err.path()).unwrap(), peak)
}

fn workflow(limits: &str, run: &str, outputs: &str) -> String {
    let limits = if limits.is_empty() { String::new() } else { format!("    limits: {{ {limits} }}\n") };
    format!("version: 1\ndefaults: {{ image: {IMAGE} }}\nsteps:\n  a:\n{limits}    run: {run}\n    outputs: {outputs}\n")
}

const MIB: u64 = 1 << 20;

#[test]
fn a_step_over_its_workspace_limit_is_killed_with_the_sentence() {
    let host = Host::new();
    // Keeps running after filling its workspace: the engine's measurement stops it.
    let p = Project::new(&workflow("workspace: 16m", "dd if=/dev/zero of=big bs=1M count=64 && sleep 120", "[]"));
    let t = Instant::now();
    let o = p.cmd(&["run"]).env("ENGINE_TRANSFER", "bind").output().unwrap();
    let err = text(&o.stderr);
    assert_eq!(code(&o), 1, "{err}");
    assert!(err.contains("wrote more than the workspace limit of 16m"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(60), "not stopped while running: {:?}", t.elapsed());
    assert_nothing_escaped(&p, &host, &[]);

    // Fills it and exits at once, between two measurements: caught before collection.
    let p = Project::new(&workflow("workspace: 16m", "dd if=/dev/zero of=o bs=1M count=64", "[o]"));
    let o = p.cmd(&["run"]).env("ENGINE_TRANSFER", "bind").output().unwrap();
    let err = text(&o.stderr);
    assert_eq!(code(&o), 1, "{err}");
    assert!(err.contains("wrote more than the workspace limit of 16m"), "{err}");
    assert!(!p.path().join(".engine/out/a/o").exists(), "an output of a failed step was exported");
    assert_nothing_escaped(&p, &host, &[]);
}

#[test]
fn outputs_over_the_limit_fail_on_both_transfers() {
    let host = Host::new();
    for transfer in ["bind", "archive"] {
        let p = Project::new(&workflow(
            "outputs: 1m",
            "mkdir -p o && dd if=/dev/zero of=o/a bs=1k count=600 && dd if=/dev/zero of=o/b bs=1k count=600",
            "[o]",
        ));
        let o = p.cmd(&["run"]).env("ENGINE_TRANSFER", transfer).output().unwrap();
        let err = text(&o.stderr);
        assert_eq!(code(&o), 1, "{transfer}: {err}");
        assert!(err.contains("outputs exceed the limit of 1m"), "{transfer}: {err}");
        assert!(!p.path().join(".engine/out/a/o").exists(), "{transfer}: outputs over the limit were exported");
        assert_nothing_escaped(&p, &host, &[]);
        // Within the limit, the same outputs pass.
        let p = Project::new(&workflow("outputs: 2m", "mkdir -p o && dd if=/dev/zero of=o/a bs=1k count=600 && ln o/a o/hard", "[o]"));
        let o = p.cmd(&["run"]).env("ENGINE_TRANSFER", transfer).output().unwrap();
        assert_eq!(code(&o), 0, "{transfer}: {}", text(&o.stderr));
        assert_eq!(std::fs::metadata(p.path().join(".engine/out/a/o/hard")).unwrap().len(), 600 << 10);
        assert_nothing_escaped(&p, &host, &[]);
    }
}

#[test]
fn a_symlink_chain_leading_out_of_the_workspace_is_rejected() {
    let host = Host::new();
    // Each link is lexically inside /workspace; followed, it is not.
    let cases = [
        // Through a symlink elsewhere in /workspace (not an output).
        (
            "mkdir o && ln -s / b && ln -s ../b/.. o/x",
            "`o/x` is a symlink to `../b/..`, which leads outside /workspace through the symlink `b`",
        ),
        // Through a symlink inside the output itself.
        ("mkdir o && ln -s .. o/b && ln -s b/../.. o/x", "`o/x` is a symlink to `b/../..`, which leads outside /workspace"),
        // A loop.
        ("mkdir o && ln -s l2 o/l1 && ln -s l1 o/l2", "more than 40 symlinks (a loop)"),
    ];
    for transfer in ["bind", "archive"] {
        for (run, reason) in cases {
            let p = Project::new(&workflow("", run, "[o]"));
            let o = p.cmd(&["run"]).env("ENGINE_TRANSFER", transfer).output().unwrap();
            let err = text(&o.stderr);
            assert_eq!(code(&o), 1, "{transfer} {run}: {err}");
            assert!(err.contains("output `o` rejected: "), "{transfer} {run}: {err}");
            assert!(err.contains(reason), "{transfer} {run}: {err}");
            assert!(!p.path().join(".engine/out/a/o").exists(), "{transfer} {run}: exported");
            assert_nothing_escaped(&p, &host, &[]);
        }
    }
    // A chain that stays inside is kept as written.
    let p = Project::new(&workflow("", "mkdir -p o/d && echo hi > o/d/f && ln -s d o/b && ln -s b/f o/x", "[o]"));
    for transfer in ["bind", "archive"] {
        let o = p.cmd(&["run", "--no-cache"]).env("ENGINE_TRANSFER", transfer).output().unwrap();
        assert_eq!(code(&o), 0, "{transfer}: {}", text(&o.stderr));
        assert_eq!(std::fs::read_to_string(p.path().join(".engine/out/a/o/x")).unwrap(), "hi\n");
    }
    assert_nothing_escaped(&p, &host, &[]);
}

#[test]
fn archive_collection_streams_a_large_output_in_bounded_memory() {
    let host = Host::new();
    let p = Project::new(&workflow("memory: 64m", "mkdir o && dd if=/dev/zero of=o/big bs=1M count=1024 2>/dev/null", "[o]"));
    let (code, err, peak) = run_measured(&p, &[("ENGINE_TRANSFER", "archive")]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::metadata(p.path().join(".engine/out/a/o/big")).unwrap().len(), 1024 * MIB);
    eprintln!("engine peak RSS collecting 1 GiB (archive): {} MiB", peak / MIB);
    assert!(peak < 64 * MIB, "the engine peaked at {} MiB collecting a 1 GiB output", peak / MIB);
    assert_nothing_escaped(&p, &host, &[]);
}

#[test]
fn archive_upload_streams_a_large_input_in_bounded_memory() {
    use std::os::unix::fs::FileExt as _;
    // Half a gigabyte keeps the test within a minute (the engine hashes the input twice, the step
    // once); any input larger than the bound would do.
    const INPUT: u64 = 512 * MIB;
    let host = Host::new();
    let p = Project::new(&format!(
        "version: 1\ndefaults: {{ image: {IMAGE} }}\nsteps:\n  a:\n    inputs: [big]\n    run: mkdir o && wc -c < big > o/sum && sha256sum big >> o/sum\n    outputs: [o]\n"
    ));
    // Sparse, but not all zeros: a marker every 64 MiB, so that a chunk lost, repeated or out of
    // place changes the digest.
    let big = std::fs::File::create(p.path().join("big")).unwrap();
    big.set_len(INPUT).unwrap();
    for k in 0..INPUT / (64 * MIB) {
        big.write_at(format!("chunk {k}").as_bytes(), k * (64 * MIB + 4099)).unwrap();
    }
    drop(big);
    let o = std::process::Command::new("sha256sum").arg("big").current_dir(p.path()).output().unwrap();
    let expected = text(&o.stdout);
    assert!(expected.ends_with("  big\n"), "sha256sum: {expected}{}", text(&o.stderr));
    let (code, err, peak) = run_measured(&p, &[("ENGINE_TRANSFER", "archive")]);
    assert_eq!(code, 0, "{err}");
    let seen = std::fs::read_to_string(p.path().join(".engine/out/a/o/sum")).unwrap();
    assert_eq!(seen, format!("{INPUT}\n{expected}"), "the step saw another file");
    eprintln!("engine peak RSS uploading {} MiB (archive): {} MiB", INPUT / MIB, peak / MIB);
    assert!(peak < 64 * MIB, "the engine peaked at {} MiB uploading a {} MiB input", peak / MIB, INPUT / MIB);
    assert_nothing_escaped(&p, &host, &[]);
}

#[test]
fn a_long_log_is_streamed_and_capped() {
    let host = Host::new();
    // A first line, 200 MB of lines, a last one.
    let run = "echo FIRST-LINE; yes 0123456789012345678901234567890123456789012345678901234567890123456789012345678 | head -n 2500000; echo LAST-LINE";
    let p = Project::new(&workflow("", &format!("'{run}'"), "[]"));
    let (code, err, peak) = run_measured(&p, &[]);
    assert_eq!(code, 0, "{err}");
    let ids = run_ids(&p);
    let log = p.path().join(".engine/runs").join(&ids[0]).join("logs/00-a.log");
    let size = std::fs::metadata(&log).unwrap().len();
    assert!(size <= 16 * MIB, "the log kept {size} bytes");
    let kept = std::fs::read_to_string(&log).unwrap();
    assert!(kept.starts_with("stdout FIRST-LINE\n"), "{}", &kept[..100]);
    assert!(kept.ends_with("stdout LAST-LINE\n"), "the last line is missing");
    assert!(kept.contains("bytes of this log cut here: at most 16m of a step's log is kept (ENGINE_LOG_LIMIT)"));
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(log.parent().unwrap().parent().unwrap().join("record.json")).unwrap()).unwrap();
    let cut = record["steps"][0]["log"]["cut"].as_u64().unwrap();
    assert!(cut > 150 * MIB, "cut {cut}");
    eprintln!("engine peak RSS for 200 MB of log: {} MiB", peak / MIB);
    assert!(peak < 60 * MIB, "the engine peaked at {} MiB for 200 MB of log", peak / MIB);
    assert_nothing_escaped(&p, &host, &[]);
}

#[test]
fn a_gigabyte_without_a_newline_stays_in_bounded_memory() {
    let host = Host::new();
    // 1 GB on stdout, not one newline in it, then a line on stderr: one line, cut at 64 KiB.
    let run = "head -c 1000000000 /dev/zero | tr \"\\\\0\" x; echo DONE >&2";
    let p = Project::new(&workflow("", &format!("'{run}'"), "[]"));
    let (code, err, peak) = run_measured(&p, &[]);
    assert_eq!(code, 0, "{err}");
    let ids = run_ids(&p);
    let log = std::fs::read(p.path().join(".engine/runs").join(&ids[0]).join("logs/00-a.log")).unwrap();
    assert!(log.len() < 128 << 10, "the log kept {} bytes of one line", log.len());
    let kept = String::from_utf8_lossy(&log);
    // Two lines (the stdout one ends only with the stream, so it may come second).
    let mut lines: Vec<&str> = kept.lines().collect();
    lines.sort();
    assert_eq!(lines.len(), 2, "{}", &kept[kept.len().saturating_sub(200)..]);
    assert_eq!(lines[0], "stderr DONE");
    assert!(lines[1].starts_with("stdout xxxx"), "{}", &lines[1][..100.min(lines[1].len())]);
    assert!(lines[1].ends_with(&format!("x [… {} bytes cut]", 1_000_000_000 - (64 << 10))), "{}", &lines[1][lines[1].len() - 100..]);
    eprintln!("engine peak RSS for 1 GB without a newline: {} MiB", peak / MIB);
    assert!(peak < 64 * MIB, "the engine peaked at {} MiB for 1 GB without a newline", peak / MIB);
    assert_nothing_escaped(&p, &host, &[]);
}
