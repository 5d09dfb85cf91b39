//! Hostile cases: host files reached through symlinks among the inputs, FIFOs and devices, the
//! engine's own folders replaced by symlinks (before and during a run), two runs sharing one
//! output folder, and planted cache entries.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[allow(unused_imports)]
use crate::common::{hostile::*, *};

/// The harness's escape check looks at every `engine-*` folder in the temp dir, and would take
/// the stand-in host folder of another case of this module running meanwhile for a leak: the
/// cases of this module run one at a time.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Generous for a run that starts one busybox container; a hang (the findings) never ends.
const RUN_BOUND: Duration = Duration::from_secs(60);

fn workflow(step_body: &str) -> String {
    format!("version: 1\ndefaults: {{ image: {IMAGE} }}\nsteps:\n  a:\n{step_body}")
}

/// The output of `engine <args>`, which must end within `bound` (else it is killed and the test
/// fails: the finding was a hang).
fn run_within(p: &Project, args: &[&str], bound: Duration) -> Output {
    let child = p.spawn(args);
    wait_within(child, bound)
}

fn wait_within(mut child: Child, bound: Duration) -> Output {
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > bound {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!("the engine did not end within {bound:?}; stderr:\n{}", text(&o.stderr));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo {}", path.display());
}

fn stderr_of(o: &Output) -> String {
    text(&o.stderr)
}

/// Every file under `dir` (recursively), for "nothing large was written" checks.
fn total_size(dir: &Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .follow_links(false)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .sum()
}

// ---- finding 5: inputs that are symlinks, FIFOs, devices -------------------------------------

#[test]
fn symlink_input_to_a_host_file_is_refused_and_its_content_never_reaches_the_cache() {
    let _serial = serial();
    let host = Host::new();
    let p = Project::new(&workflow("    inputs: [\"secret.txt\"]\n    run: cat secret.txt\n"));
    symlink(host.secret_path(), p.path().join("secret.txt")).unwrap();
    let o = run_within(&p, &["run"], RUN_BOUND);
    let err = stderr_of(&o);
    assert_eq!(code(&o), 2, "{err}");
    let want = format!(
        "step `a`: input `secret.txt` (pattern `secret.txt`) is a symlink to `{}`, outside the workflow folder",
        host.secret_path().display()
    );
    assert!(err.contains(&want), "{err}");
    assert_nothing_escaped(&p, &host, &[]);

    // Taken in by a folder pattern too: still refused, naming the file and the pattern.
    let p = Project::new(&workflow("    inputs: [\"src\"]\n    run: ls src\n"));
    p.write("src/ok.txt", "ok\n");
    symlink(host.secret_path(), p.path().join("src/leak")).unwrap();
    let o = run_within(&p, &["run"], RUN_BOUND);
    assert_eq!(code(&o), 2, "{}", stderr_of(&o));
    assert!(stderr_of(&o).contains("input `src/leak` (pattern `src`) is a symlink to"), "{}", stderr_of(&o));
    assert_nothing_escaped(&p, &host, &[]);
}

#[test]
fn symlink_inputs_to_root_dangling_outside_and_dev_zero_are_refused_at_once() {
    let _serial = serial();
    let host = Host::new();
    for (name, target) in [("root", "/"), ("dangling", "/nonexistent/engine-test/file"), ("zero", "/dev/zero")] {
        let p = Project::new(&workflow(&format!("    inputs: [\"{name}\"]\n    run: ls -l {name}\n")));
        symlink(target, p.path().join(name)).unwrap();
        let o = run_within(&p, &["run"], RUN_BOUND);
        let err = stderr_of(&o);
        assert_eq!(code(&o), 2, "{name}: {err}");
        assert!(
            err.contains(&format!("input `{name}` (pattern `{name}`) is a symlink to `{target}`, outside the workflow folder")),
            "{name}: {err}"
        );
        assert!(!err.contains("cache directory"), "{name}: {err}");
        assert!(total_size(&p.cache_dir()) < 1 << 20, "{name}: the cache grew");
        assert_nothing_escaped(&p, &host, &[]);
    }
}

#[test]
fn a_fifo_among_the_inputs_is_refused_without_being_opened_and_a_link_to_one_outside_too() {
    let _serial = serial();
    let host = Host::new();
    let p = Project::new(&workflow("    inputs: [\"in\"]\n    run: ls in\n"));
    p.write("in/ok.txt", "ok\n");
    mkfifo(&p.path().join("in/pipe"));
    let o = run_within(&p, &["run"], RUN_BOUND);
    let err = stderr_of(&o);
    assert_eq!(code(&o), 2, "{err}");
    assert!(err.contains("input `in/pipe` (pattern `in`) is a FIFO (named pipe); only regular files and symlinks"), "{err}");
    assert_nothing_escaped(&p, &host, &[]);

    // A FIFO outside the folder, reached through a link: refused as a link leaving the folder.
    let fifo_dir = tempfile::tempdir().unwrap();
    let fifo = fifo_dir.path().join("pipe");
    mkfifo(&fifo);
    let p = Project::new(&workflow("    inputs: [\"pipe\"]\n    run: ls -l pipe\n"));
    symlink(&fifo, p.path().join("pipe")).unwrap();
    let o = run_within(&p, &["run"], RUN_BOUND);
    assert_eq!(code(&o), 2, "{}", stderr_of(&o));
    assert!(stderr_of(&o).contains("input `pipe` (pattern `pipe`) is a symlink to"), "{}", stderr_of(&o));
    assert_nothing_escaped(&p, &host, &[]);
}

#[test]
fn links_inside_the_folder_are_staged_as_links_even_dangling_and_never_followed() {
    let _serial = serial();
    let host = Host::new();
    let p = Project::new(&workflow(
        "    inputs: [\"data\"]\n    run: test -L data/link && test \"$(readlink data/link)\" = real.txt && test -L data/gone && ! test -e data/gone && cat data/link\n",
    ));
    p.write("data/real.txt", "real\n");
    symlink("real.txt", p.path().join("data/link")).unwrap();
    symlink("missing.txt", p.path().join("data/gone")).unwrap();
    let o = run_within(&p, &["run"], RUN_BOUND);
    assert_eq!(code(&o), 0, "{}", stderr_of(&o));
    assert!(text(&o.stdout).contains("real"), "{}", text(&o.stdout));
    assert_nothing_escaped(&p, &host, &[]);
}

// ---- finding 15: the engine's own folders ------------------------------------------------------

#[test]
fn engine_folders_that_are_symlinks_are_refused_with_exit_3_and_the_victim_is_untouched() {
    let _serial = serial();
    let host = Host::new();
    let body = "    run: mkdir -p o && echo hi > o/x\n    outputs: [o]\n";
    for (planted, want) in [(".engine/out", ".engine/out is a symlink"), (".engine/runs", ".engine/runs is a symlink")] {
        let p = Project::new(&workflow(body));
        std::fs::create_dir_all(p.path().join(".engine")).unwrap();
        symlink(host.victim(), p.path().join(planted)).unwrap();
        let o = run_within(&p, &["run"], RUN_BOUND);
        let err = stderr_of(&o);
        assert_eq!(code(&o), 3, "{planted}: {err}");
        assert!(err.contains(want) && err.contains("never follows symlinks"), "{planted}: {err}");
        std::fs::remove_file(p.path().join(planted)).unwrap();
        assert_nothing_escaped(&p, &host, &[]);
    }

    // `--out DIR` naming a symlink.
    let p = Project::new(&workflow(body));
    symlink(host.victim(), p.path().join("exports")).unwrap();
    let o = run_within(&p, &["run", "--out", "exports"], RUN_BOUND);
    assert_eq!(code(&o), 3, "{}", stderr_of(&o));
    assert!(stderr_of(&o).contains("exports is a symlink"), "{}", stderr_of(&o));
    assert_nothing_escaped(&p, &host, &[]);
}

#[test]
fn a_cache_folder_replaced_by_a_symlink_is_refused_with_exit_3() {
    let _serial = serial();
    let host = Host::new();
    let p = Project::new(&workflow("    run: mkdir -p o && echo hi > o/x\n    outputs: [o]\n"));
    std::fs::create_dir_all(p.cache_dir().join("v1")).unwrap();
    symlink(host.victim(), p.cache_dir().join("v1/blobs")).unwrap();
    let o = run_within(&p, &["run"], RUN_BOUND);
    assert_eq!(code(&o), 3, "{}", stderr_of(&o));
    assert!(stderr_of(&o).contains("v1/blobs is a symlink"), "{}", stderr_of(&o));
    std::fs::remove_file(p.cache_dir().join("v1/blobs")).unwrap();
    assert_nothing_escaped(&p, &host, &[]);
}

/// Lines of a child's stderr, collected by a thread as they come.
fn collect_stderr(child: &mut Child) -> Arc<Mutex<String>> {
    let buf = Arc::new(Mutex::new(String::new()));
    let stderr = child.stderr.take().unwrap();
    let b = buf.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut b = b.lock().unwrap();
            b.push_str(&line);
            b.push('\n');
        }
    });
    buf
}

/// The host folder that step `step` of run `run_id` sees as /workspace (bind transfer).
fn workspace_of(run_id: &str, step: &str) -> PathBuf {
    let dirs = run_dirs(run_id);
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs[0].join("ws").join(step)
}

const WAITING_STEP: &str = "    run: while [ ! -e go ]; do sleep 0.1; done; mkdir -p o && echo fresh > o/x\n    outputs: [o]\n";

#[test]
fn swapping_the_output_and_runs_folders_for_symlinks_during_a_run_redirects_nothing() {
    let _serial = serial();
    let host = Host::new();
    let p = Project::new(&workflow(WAITING_STEP));
    // A previous export that the run replaces.
    p.write(".engine/out/a/stale.txt", "old\n");
    let mut child = p
        .cmd(&["run", "--output", "json"])
        .env("ENGINE_TRANSFER", "bind")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let run_id = first_event_run_id(&mut child);
    wait_for("the step's container", RUN_BOUND, || !containers(&format!("engine.run={run_id}")).is_empty());
    // The swap: the real folders move away, symlinks to the victim take their places.
    for dir in ["out", "runs"] {
        std::fs::rename(p.path().join(".engine").join(dir), p.path().join(format!(".engine/{dir}.real"))).unwrap();
        symlink(host.victim(), p.path().join(".engine").join(dir)).unwrap();
    }
    std::fs::write(workspace_of(&run_id, "a").join("go"), "").unwrap();
    let o = wait_within(child, RUN_BOUND);
    assert_eq!(code(&o), 0, "{}", stderr_of(&o));
    // The export went into the folder the run opened, wherever it is now; not through the link.
    assert_eq!(std::fs::read_to_string(p.path().join(".engine/out.real/a/o/x")).unwrap(), "fresh\n");
    assert!(!p.path().join(".engine/out.real/a/stale.txt").exists());
    // The record too: finished in the run's own folder.
    let record = std::fs::read_to_string(p.path().join(format!(".engine/runs.real/{run_id}/record.json"))).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&record).unwrap();
    assert_eq!(parsed["status"], "succeeded", "{record}");
    for dir in ["out", "runs"] {
        std::fs::remove_file(p.path().join(".engine").join(dir)).unwrap();
        std::fs::rename(p.path().join(format!(".engine/{dir}.real")), p.path().join(".engine").join(dir)).unwrap();
    }
    assert_nothing_escaped(&p, &host, &[]);
}

// ---- finding 16: two runs, one output folder -----------------------------------------------------

#[test]
fn two_concurrent_runs_in_one_folder_both_succeed_with_complete_identical_exports() {
    let _serial = serial();
    let host = Host::new();
    // Enough files that an export takes a moment, and a step long enough for the runs to overlap.
    let p = Project::new(&workflow(
        "    run: sleep 1; mkdir -p o; i=0; while [ $i -lt 300 ]; do echo line-$i > o/f$i; i=$((i+1)); done\n    outputs: [o]\n",
    ));
    let mut waited = 0;
    for round in 0..6 {
        let (a, b) = (p.spawn(&["run", "--no-cache"]), p.spawn(&["run", "--no-cache"]));
        let (a, b) = (wait_within(a, RUN_BOUND * 2), wait_within(b, RUN_BOUND * 2));
        for o in [&a, &b] {
            assert_eq!(code(o), 0, "round {round}: {}", stderr_of(o));
        }
        waited += [&a, &b].iter().filter(|o| stderr_of(o).contains("waiting for another engine run using")).count();
        let out = p.path().join(".engine/out/a/o");
        let n = std::fs::read_dir(&out).unwrap().count();
        assert_eq!(n, 300, "round {round}: export incomplete");
        for i in [0, 150, 299] {
            assert_eq!(std::fs::read_to_string(out.join(format!("f{i}"))).unwrap(), format!("line-{i}\n"));
        }
    }
    assert!(waited >= 1, "the runs never overlapped: the test proves nothing");
    assert_nothing_escaped(&p, &host, &[]);
}

#[test]
fn a_run_waiting_for_the_output_folder_says_so_once_and_ctrl_c_ends_it_with_130() {
    let _serial = serial();
    let host = Host::new();
    let p = Project::new(&workflow(WAITING_STEP));
    let mut first = p
        .cmd(&["run", "--output", "json"])
        .env("ENGINE_TRANSFER", "bind")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let run_id = first_event_run_id(&mut first);
    wait_for("the first run's container", RUN_BOUND, || !containers(&format!("engine.run={run_id}")).is_empty());
    let mut second = p.spawn(&["run"]);
    let err = collect_stderr(&mut second);
    // The folder as the engine names it (relative to the workflow file's folder) and the holder.
    let want = format!(".engine/out (pid {})…", first.id());
    let err_has = |s: &str| err.lock().unwrap().contains(s);
    wait_for("the waiting message", RUN_BOUND, || err_has("waiting for another engine run using ") && err_has(&want));
    signal(&second, libc::SIGINT);
    let start = Instant::now();
    let o = wait_within(second, Duration::from_secs(10));
    assert_eq!(code(&o), 130);
    assert!(start.elapsed() < Duration::from_secs(5), "took {:?}", start.elapsed());
    assert_eq!(err.lock().unwrap().matches("waiting for another engine run").count(), 1);
    std::fs::write(workspace_of(&run_id, "a").join("go"), "").unwrap();
    let o = wait_within(first, RUN_BOUND);
    assert_eq!(code(&o), 0, "{}", stderr_of(&o));
    assert_nothing_escaped(&p, &host, &[]);
}

// ---- finding 17: planted cache entries -----------------------------------------------------------

/// The one manifest file of the project's cache.
fn manifest_file(p: &Project) -> PathBuf {
    let files: Vec<PathBuf> = walkdir::WalkDir::new(p.cache_dir().join("v1/actions"))
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file() && e.path().extension().is_some_and(|x| x == "json"))
        .map(|e| e.into_path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files[0].clone()
}

/// Run once (so the step is cached), let `plant` damage the cache, run again: the second run
/// must end in time, execute the step instead of restoring it, and export only its real outputs.
fn planted(plant: impl FnOnce(&Project, &Path)) {
    let host = Host::new();
    let p = Project::new(&workflow("    run: mkdir -p o && echo hi > o/x\n    outputs: [o]\n"));
    let o = run_within(&p, &["run"], RUN_BOUND);
    assert_eq!(code(&o), 0, "{}", stderr_of(&o));
    plant(&p, &manifest_file(&p));
    let o = run_within(&p, &["run", "--output", "json"], RUN_BOUND);
    assert_eq!(code(&o), 0, "{}", stderr_of(&o));
    let events: Vec<serde_json::Value> = text(&o.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(statuses(&events)["a"], "succeeded", "the damaged entry was restored");
    let out = p.path().join(".engine/out/a");
    let exported: Vec<String> = walkdir::WalkDir::new(&out)
        .min_depth(1)
        .into_iter()
        .flatten()
        .map(|e| e.path().strip_prefix(&out).unwrap().display().to_string())
        .collect();
    assert_eq!(exported, vec!["o", "o/x"]);
    assert_nothing_escaped(&p, &host, &[]);
    // And the store is whole again: the next run restores it.
    let o = run_within(&p, &["run", "--output", "json"], RUN_BOUND);
    let events: Vec<serde_json::Value> = text(&o.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(statuses(&events)["a"], "cached");
}

#[test]
fn a_planted_manifest_symlink_to_etc_passwd_is_a_miss_never_restored() {
    let _serial = serial();
    planted(|_, manifest| {
        let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(manifest).unwrap()).unwrap();
        m["entries"].as_array_mut().unwrap().push(serde_json::json!({"kind": "symlink", "path": "o/passwd", "target": "/etc/passwd"}));
        std::fs::write(manifest, serde_json::to_vec(&m).unwrap()).unwrap();
    });
    planted(|_, manifest| {
        let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(manifest).unwrap()).unwrap();
        m["entries"].as_array_mut().unwrap().push(serde_json::json!({"kind": "symlink", "path": "o/up", "target": "../../../.."}));
        std::fs::write(manifest, serde_json::to_vec(&m).unwrap()).unwrap();
    });
}

#[test]
fn a_blob_or_manifest_replaced_by_a_fifo_or_a_symlink_is_a_miss_within_seconds() {
    let _serial = serial();
    let blob_of_x = |p: &Project, manifest: &Path| -> PathBuf {
        let m: serde_json::Value = serde_json::from_slice(&std::fs::read(manifest).unwrap()).unwrap();
        let entry = m["entries"].as_array().unwrap().iter().find(|e| e["path"] == "o/x").unwrap().clone();
        let hex = entry["digest"].as_str().unwrap().trim_start_matches("sha256:").to_string();
        p.cache_dir().join("v1/blobs").join(&hex[..2]).join(&hex)
    };
    planted(|p, manifest| {
        let blob = blob_of_x(p, manifest);
        std::fs::remove_file(&blob).unwrap();
        mkfifo(&blob);
    });
    planted(|p, manifest| {
        let blob = blob_of_x(p, manifest);
        std::fs::remove_file(&blob).unwrap();
        symlink("/etc/passwd", &blob).unwrap();
    });
    planted(|_, manifest| {
        std::fs::remove_file(manifest).unwrap();
        mkfifo(manifest);
    });
}
