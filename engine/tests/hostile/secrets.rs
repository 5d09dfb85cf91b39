//! Hostile cases: secrets and the terminal. A step that prints its secret (whole, line by line,
//! split across writes, base64-encoded), a host user trying to read a running step's secret, an
//! engine killed while its secret sits on the host, a step writing escape sequences to forge
//! the engine's own lines, and a step writing one 64 MiB line.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use base64::Engine as _;

#[allow(unused_imports)]
use crate::common::{hostile::*, *};

/// The escape check looks for the host marker in every `engine-*` entry of the temp dir, and
/// `Host::new()` makes such an entry (`engine-test-host-*`): cases that run at the same time see
/// each other's host file. This module's cases therefore run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A 5-line PEM-like secret, unique to this test run, and the values it must never appear as.
fn pem() -> (String, Vec<String>) {
    let u = unique("k").replace('-', "");
    let value = format!("-----BEGIN TEST KEY {u}-----\nMIIB{u}AAAA1111\nQUJD{u}BBBB2222\nQ0RF{u}CCCC3333\n-----END TEST KEY {u}-----\n");
    let mut needles: Vec<String> = value.lines().map(str::to_string).collect();
    let encoded = base64::engine::general_purpose::STANDARD.encode(&value);
    needles.extend(encoded.as_bytes().chunks(76).map(|c| String::from_utf8_lossy(c).into_owned()));
    (value, needles)
}

fn assert_absent(what: &str, haystack: &[u8], needles: &[String]) {
    for n in needles {
        assert!(!haystack.windows(n.len()).any(|w| w == n.as_bytes()), "`{n}` appears in {what}:\n{}", text(haystack));
    }
}

/// The run's log files (`.engine/runs/<id>/logs/*.log`), concatenated.
fn record_logs(p: &Project) -> Vec<u8> {
    let mut all = Vec::new();
    for id in run_ids(p) {
        let dir = p.path().join(".engine/runs").join(id).join("logs");
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            all.extend(std::fs::read(e.path()).unwrap());
        }
    }
    all
}

#[test]
fn a_pem_secret_printed_whole_by_line_split_and_encoded_is_masked_everywhere() {
    let _serial = serial();
    let host = Host::new();
    let (value, needles) = pem();
    let p = Project::new(&format!(
        r#"version: 1
defaults: {{ image: {IMAGE} }}
steps:
  leak:
    secrets: [PEM_KEY]
    cache: false
    run: |
      cat /run/secrets/PEM_KEY
      echo "line: $(sed -n 2p /run/secrets/PEM_KEY) end"
      l3=$(sed -n 3p /run/secrets/PEM_KEY)
      printf '%s' "$(echo "$l3" | cut -c1-9)"; sleep 0.3; printf '%s\n' "$(echo "$l3" | cut -c10-)"
      base64 /run/secrets/PEM_KEY
      cat /run/secrets/PEM_KEY >&2
      echo done
"#
    ));
    let run = |args: &[&str]| -> Output { p.cmd(args).env("PEM_KEY", &value).output().unwrap() };
    let plain = run(&["run"]);
    assert_eq!(code(&plain), 0, "{}", text(&plain.stderr));
    let json = run(&["run", "--output", "json"]);
    assert_eq!(code(&json), 0, "{}", text(&json.stderr));
    for (what, o) in [("plain", &plain), ("json", &json)] {
        assert_absent(&format!("{what} stdout"), &o.stdout, &needles);
        assert_absent(&format!("{what} stderr"), &o.stderr, &needles);
    }
    // The masked lines are there, in the output and in the record's log files.
    let out = text(&plain.stdout);
    assert!(out.contains("leak | ***\n") && out.contains("leak | line: *** end\n") && out.contains("leak | done\n"), "{out}");
    assert!(text(&json.stdout).contains(r#""line":"***""#), "{}", text(&json.stdout));
    let logs = record_logs(&p);
    assert!(text(&logs).contains("stderr ***\n") && text(&logs).contains("stdout done\n"), "{}", text(&logs));
    assert_absent("the record's logs", &logs, &needles);
    let mut all: Vec<&str> = needles.iter().map(String::as_str).collect();
    all.push(&value);
    assert_nothing_escaped(&p, &host, &all);
}

/// The secrets folders of run `id` (`/dev/shm/engine-secrets-<id>-*`).
fn secrets_dirs(id: &str) -> Vec<PathBuf> {
    let prefix = format!("engine-secrets-{id}-");
    std::fs::read_dir("/dev/shm")
        .expect("/dev/shm must exist on the test host")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect()
}

/// A step (bind transfer) that waits until the test creates `go` in its workspace.
fn waiting_project() -> Project {
    Project::new(&format!(
        "version: 1\ndefaults: {{ image: {IMAGE} }}\nsteps:\n  wait:\n    secrets: [TOKEN]\n    limits: {{ timeout: 2m }}\n    \
         run: while [ ! -e go ]; do sleep 0.05; done; wc -c < /run/secrets/TOKEN\n"
    ))
}

/// Start the waiting step; returns the engine, its run id and the secrets folder once it exists.
fn start_waiting(p: &Project, secret: &str) -> (std::process::Child, String, PathBuf) {
    let mut child = p
        .cmd(&["run", "--output", "json"])
        .env("ENGINE_TRANSFER", "bind")
        .env("TOKEN", secret)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let id = first_event_run_id(&mut child);
    wait_for("the step's secrets folder", Duration::from_secs(60), || secrets_dirs(&id).len() == 1);
    let dir = secrets_dirs(&id).remove(0);
    wait_for("the step's container", Duration::from_secs(60), || !containers(&format!("engine.run={id}")).is_empty());
    (child, id, dir)
}

fn fs_type(path: &Path) -> String {
    let o = Command::new("stat").args(["-f", "-c", "%T"]).arg(path).output().unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    text(&o.stdout).trim().to_string()
}

#[test]
fn a_running_steps_secret_is_on_tmpfs_and_unreadable_by_other_host_users() {
    let _serial = serial();
    let host = Host::new();
    let secret = unique("tok-5ecret");
    let p = waiting_project();
    let (child, id, dir) = start_waiting(&p, &secret);

    assert_eq!(fs_type(&dir), "tmpfs", "{} is not on a tmpfs", dir.display());
    let meta = std::fs::symlink_metadata(&dir).unwrap();
    assert!(meta.is_dir());
    assert_eq!(meta.mode() & 0o7777, 0o700, "{}", dir.display());
    assert_eq!(meta.uid(), unsafe { libc::geteuid() }, "owned by the engine's user");
    let file = dir.join("s/TOKEN");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), secret);
    if unsafe { libc::geteuid() } == 0 {
        // The step user's uid (1000) and any other uid: neither gets through the 0700 parent.
        for uid in ["1000", "4242"] {
            let o = Command::new("setpriv")
                .args(["--reuid", uid, "--regid", uid, "--clear-groups", "cat"])
                .arg(&file)
                .output()
                .expect("setpriv (util-linux) is needed to act as another user");
            assert!(!o.status.success(), "uid {uid} read the secret: {}", text(&o.stdout));
            assert!(text(&o.stderr).contains("Permission denied"), "{}", text(&o.stderr));
            assert!(!text(&o.stdout).contains(&secret));
        }
    }

    let ws = run_dirs(&id).first().expect("the run's temp folder").join("ws/wait");
    std::fs::write(ws.join("go"), "").unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert!(!dir.exists(), "the secrets folder outlived the step");
    assert_nothing_escaped(&p, &host, &[&secret]);
}

#[test]
fn a_killed_engines_secrets_folder_is_removed_by_engine_clean() {
    let _serial = serial();
    let host = Host::new();
    let secret = unique("kill-5ecret");
    let p = waiting_project();
    let (mut child, id, dir) = start_waiting(&p, &secret);
    signal(&child, libc::SIGKILL);
    child.wait().unwrap();
    assert!(dir.join("s/TOKEN").exists(), "the folder is a leftover of the killed engine");

    let o = p.run(&["clean"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert!(!dir.exists(), "engine clean left {}", dir.display());
    assert!(secrets_dirs(&id).is_empty());
    assert_nothing_escaped(&p, &host, &[&secret]);
}

#[test]
fn escape_sequences_and_carriage_returns_cannot_forge_lines() {
    let _serial = serial();
    let host = Host::new();
    let p = Project::new(&format!(
        r#"version: 1
defaults: {{ image: {IMAGE} }}
steps:
  evil:
    cache: false
    run: |
      printf 'a\033[2Jb\n'
      printf '\033]52;c;SGVsbG8=\007\n'
      printf 'progress\rtrusted | ok succeeded\n'
      printf 'x\033[1A\033[2Ky\n'
      printf 'c1 \302\233 end\n'
      printf 'last\r'
"#
    ));
    let o = p.run(&["run"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    for (what, bytes) in [("stdout", &o.stdout), ("stderr", &o.stderr)] {
        for bad in [b'\x1b', b'\x07', b'\r'] {
            assert!(!bytes.contains(&bad), "{what} holds byte {bad:#04x}: {:?}", text(bytes));
        }
        assert!(!text(bytes).contains('\u{9b}'), "{what} holds a C1 CSI");
    }
    let out = text(&o.stdout);
    assert!(out.lines().all(|l| l.starts_with("evil | ")), "{out}");
    let forged: Vec<&str> = out.lines().filter(|l| l.contains("trusted | ok succeeded")).collect();
    assert_eq!(forged, ["evil | progress␍trusted | ok succeeded"], "{out}");
    assert!(out.contains("evil | a␛[2Jb\n") && out.contains("evil | ␛]52;c;SGVsbG8=␇\n"), "{out}");
    assert!(out.contains("evil | c1 ␛[ end\n") && out.contains("evil | last\n"), "{out}");

    // JSON: the same text, escaped; no raw control character on the terminal either.
    let o = p.run(&["run", "--output", "json"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert!(!o.stdout.iter().any(|&b| b < 0x20 && b != b'\n'), "{}", text(&o.stdout));
    assert!(!text(&o.stdout).contains('\u{9b}'));
    let lines: Vec<String> = text(&o.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event"] == "log")
        .map(|e| e["line"].as_str().unwrap().to_string())
        .collect();
    assert!(lines.contains(&"progress\rtrusted | ok succeeded".to_string()), "{lines:?}");
    assert!(lines.contains(&"c1 \u{9b} end".to_string()), "{lines:?}");
    assert_nothing_escaped(&p, &host, &[]);
}

#[test]
fn a_64_mib_line_without_newline_is_handled_in_linear_time_and_cut() {
    let _serial = serial();
    let host = Host::new();
    let p = Project::new(&format!(
        "version: 1\ndefaults: {{ image: {IMAGE} }}\nsteps:\n  long:\n    cache: false\n    \
         run: head -c 67108864 /dev/zero | tr '\\000' a; echo; echo after; head -c 100000 /dev/zero | tr '\\000' b\n"
    ));
    let started = Instant::now();
    let o = p.run(&["run"]);
    let took = started.elapsed();
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    // Quadratic splitting took ~90 s for this; linear is a few seconds, container start included
    // (the bound leaves room for a loaded machine).
    assert!(took < Duration::from_secs(15), "took {took:?}");
    let out = text(&o.stdout);
    let lines: Vec<&str> = out.lines().collect();
    let kept = 64 * 1024;
    assert_eq!(lines.len(), 3, "{:?}", lines.iter().map(|l| l.len()).collect::<Vec<_>>());
    assert_eq!(lines[0], format!("long | {} [… {} bytes cut]", "a".repeat(kept), 67_108_864 - kept));
    assert_eq!(lines[1], "long | after");
    assert_eq!(lines[2], format!("long | {} [… {} bytes cut]", "b".repeat(kept), 100_000 - kept));
    let logs = record_logs(&p);
    assert!(logs.len() < 200 * 1024, "the record's log holds {} bytes", logs.len());
    assert_nothing_escaped(&p, &host, &[]);
}
