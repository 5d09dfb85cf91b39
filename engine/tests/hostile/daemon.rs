//! Hostile cases: a daemon that misbehaves (accepts and never answers, or freezes mid-step), and
//! the termination ladder (stop signal, grace period, SIGKILL; a second Ctrl-C kills at once).
//!
//! The misbehaving daemons are real sockets: a listener that accepts and never answers, and a
//! proxy in front of the real daemon that can be told to stop forwarding (frozen) mid-step.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::{Child, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{hostile::*, *};

const REAL_DAEMON: &str = "/var/run/docker.sock";

/// These cases assert time bounds of a few seconds: they run one at a time, not against each
/// other's containers for the two cores.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A socket standing in for the daemon: `silent` accepts and never answers; `proxy` forwards to
/// the real daemon until `freeze` and then holds every byte (in both directions, on every
/// connection, new ones included).
struct FakeHost {
    _dir: tempfile::TempDir,
    path: PathBuf,
    frozen: Arc<AtomicBool>,
}

impl FakeHost {
    fn silent() -> FakeHost {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("silent.sock");
        let listener = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for conn in listener.incoming().flatten() {
                held.push(conn);
            }
        });
        FakeHost { _dir: dir, path, frozen: Arc::new(AtomicBool::new(true)) }
    }

    fn proxy() -> FakeHost {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let frozen = Arc::new(AtomicBool::new(false));
        let f = frozen.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for client in listener.incoming().flatten() {
                if f.load(Ordering::SeqCst) {
                    held.push(client);
                    continue;
                }
                let Ok(upstream) = UnixStream::connect(REAL_DAEMON) else { continue };
                let (c2, u2) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
                let (fa, fb) = (f.clone(), f.clone());
                std::thread::spawn(move || pump(client, upstream, fa));
                std::thread::spawn(move || pump(u2, c2, fb));
            }
        });
        FakeHost { _dir: dir, path, frozen }
    }

    fn host(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }
}

/// Copy `from` to `to`; while frozen, what was read is held, not written.
fn pump(mut from: UnixStream, mut to: UnixStream, frozen: Arc<AtomicBool>) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => {
                let _ = to.shutdown(std::net::Shutdown::Write);
                return;
            }
            Ok(n) => n,
        };
        while frozen.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if to.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

/// A running engine whose stdout and stderr are collected as they come.
struct Running {
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl Running {
    fn start(mut cmd: std::process::Command) -> Running {
        use std::process::Stdio;
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let collect = |pipe: Box<dyn Read + Send>| {
            let buf = Arc::new(Mutex::new(String::new()));
            let b = buf.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let mut b = b.lock().unwrap();
                    b.push_str(&line);
                    b.push('\n');
                }
            });
            buf
        };
        let stdout = collect(Box::new(child.stdout.take().unwrap()));
        let stderr = collect(Box::new(child.stderr.take().unwrap()));
        Running { child, stdout, stderr }
    }

    fn out(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    fn err(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn wait_stdout(&self, needle: &str, deadline: Duration) {
        wait_for(&format!("`{needle}` on stdout"), deadline, || self.out().contains(needle));
    }

    fn wait_stderr(&self, needle: &str, deadline: Duration) {
        wait_for(&format!("`{needle}` on stderr"), deadline, || self.err().contains(needle));
    }

    /// The exit status within `deadline` (the engine is killed and the test fails otherwise), and
    /// the time it took from the call.
    fn exit_within(&mut self, deadline: Duration) -> (ExitStatus, Duration) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // The reader threads see end of file right after the exit.
                std::thread::sleep(Duration::from_millis(100));
                return (status, start.elapsed());
            }
            if start.elapsed() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("the engine did not exit within {deadline:?}\nstdout:\n{}\nstderr:\n{}", self.out(), self.err());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn signal(&self, sig: i32) {
        signal(&self.child, sig);
    }
}

fn workflow(step: &str, run: &str, timeout: &str) -> String {
    format!("version: 1\ndefaults: {{ image: {IMAGE} }}\nsteps:\n  {step}:\n    run: \"{run}\"\n    limits: {{ timeout: {timeout} }}\n")
}

/// The project's runs leave nothing once `engine clean` ran against the real daemon (the engine
/// that left them has exited).
fn clean_then_check(p: &Project, host: &Host, step: &str) {
    let o = p.run(&["clean"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert!(containers(&format!("engine.step={step}")).is_empty(), "`engine clean` left the step's container");
    assert_nothing_escaped(p, host, &[]);
}

#[test]
fn a_daemon_that_never_answers_fails_every_command_with_exit_3_within_seconds() {
    let _serial = serial();
    let host = Host::new();
    let silent = FakeHost::silent();
    let p = Project::new(&workflow("a", "true", "10s"));
    let expected = format!("the Docker daemon at {} did not answer within 5s", silent.host());
    for args in [&["run"][..], &["plan"], &["clean"], &["images", "ls"]] {
        let started = Instant::now();
        let o = p.cmd(args).env("DOCKER_HOST", silent.host()).output().unwrap();
        let err = text(&o.stderr);
        assert_eq!(code(&o), 3, "engine {args:?}: {err}");
        assert!(err.contains(&expected), "engine {args:?}: {err}");
        assert!(started.elapsed() < Duration::from_secs(10), "engine {args:?} took {:?}", started.elapsed());
    }
    assert_nothing_escaped(&p, &host, &[]);
}

#[test]
fn a_daemon_frozen_mid_step_still_ends_the_run_after_the_timeout_with_exit_3_and_the_leftovers() {
    let _serial = serial();
    let host = Host::new();
    let proxy = FakeHost::proxy();
    let step = unique("frozen-timeout");
    let p = Project::new(&workflow(&step, "echo started; sleep 300", "3s"));
    let mut cmd = p.cmd(&["run"]);
    cmd.env("DOCKER_HOST", proxy.host()).env("ENGINE_DOCKER_TIMEOUT", "3s");
    let mut engine = Running::start(cmd);
    // Printed by the engine once the container was started and attached: past the last call
    // before the step's timeout.
    engine.wait_stdout("started", Duration::from_secs(60));
    proxy.freeze();
    let (status, took) = engine.exit_within(Duration::from_secs(40));
    let err = engine.err();
    assert_eq!(status.code(), Some(3), "{err}");
    assert!(err.contains("timed out after 3s"), "{err}");
    assert!(err.contains(&format!("the Docker daemon at {} did not answer within", proxy.host())), "{err}");
    assert!(err.contains("these may be left behind") && err.contains(&format!("-{step}")), "{err}");
    assert!(err.contains("`engine clean` removes them"), "{err}");
    // 3 s of timeout, then the stop (grace + deadline) and a few 3 s deadlines for the cleanup.
    assert!(took < Duration::from_secs(30), "took {took:?}");
    clean_then_check(&p, &host, &step);
}

#[test]
fn ctrl_c_with_a_frozen_daemon_exits_130_within_the_cleanup_bound_and_names_the_leftovers() {
    let _serial = serial();
    let host = Host::new();
    let proxy = FakeHost::proxy();
    let step = unique("frozen-int");
    // With a secret: its folder must not outlive an engine that exits without its destructors.
    let p = Project::new(&format!("{}    secrets: [DAEMON_TEST_TOKEN]\n", workflow(&step, "echo started; sleep 300", "10m")));
    let secret = "daemon-test-secret-5f1c0e";
    let mut cmd = p.cmd(&["run"]);
    cmd.env("DOCKER_HOST", proxy.host()).env("DAEMON_TEST_TOKEN", secret);
    let mut engine = Running::start(cmd);
    engine.wait_stdout("started", Duration::from_secs(60));
    proxy.freeze();
    engine.signal(libc::SIGINT);
    let (status, took) = engine.exit_within(Duration::from_secs(20));
    let err = engine.err();
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(took < Duration::from_secs(13), "took {took:?}: {err}");
    assert!(err.contains("the cleanup did not finish within 10s"), "{err}");
    assert!(err.contains("these may be left behind") && err.contains(&format!("-{step}")), "{err}");
    assert!(err.contains("temporary folders") && err.contains("`engine clean` removes them"), "{err}");
    assert_eq!(containers(&format!("engine.step={step}")).len(), 1, "the frozen daemon kept the container");
    let o = p.run(&["clean"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert!(containers(&format!("engine.step={step}")).is_empty(), "`engine clean` left the step's container");
    assert_nothing_escaped(&p, &host, &[secret]);
}

#[test]
fn a_second_ctrl_c_with_a_frozen_daemon_exits_130_at_once() {
    let _serial = serial();
    let host = Host::new();
    let proxy = FakeHost::proxy();
    let step = unique("frozen-int2");
    let p = Project::new(&workflow(&step, "echo started; sleep 300", "10m"));
    let mut cmd = p.cmd(&["run"]);
    cmd.env("DOCKER_HOST", proxy.host());
    let mut engine = Running::start(cmd);
    engine.wait_stdout("started", Duration::from_secs(60));
    proxy.freeze();
    engine.signal(libc::SIGINT);
    // The first interrupt was handled (signals sent back to back would merge into one).
    engine.wait_stderr("interrupted;", Duration::from_secs(5));
    engine.signal(libc::SIGINT);
    let (status, took) = engine.exit_within(Duration::from_secs(10));
    let err = engine.err();
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(took < Duration::from_secs(4), "took {took:?}: {err}");
    assert!(err.contains("interrupted again") && err.contains("`engine clean` removes them"), "{err}");
    clean_then_check(&p, &host, &step);
}

#[test]
fn a_timed_out_step_gets_the_stop_signal_before_sigkill() {
    let _serial = serial();
    let host = Host::new();
    let step = unique("term-timeout");
    let p = Project::new(&workflow(&step, "trap 'echo got TERM; exit 143' TERM; echo started; while true; do sleep 1; done", "2s"));
    let started = Instant::now();
    let o = p.run(&["run"]);
    let (out, err) = (text(&o.stdout), text(&o.stderr));
    assert_eq!(code(&o), 1, "{err}");
    assert!(err.contains("timed out after 2s"), "{err}");
    assert!(out.contains("got TERM"), "the step never saw SIGTERM: {out}");
    // It left on the stop signal: no need to wait for the grace period.
    assert!(started.elapsed() < Duration::from_secs(15), "took {:?}", started.elapsed());
    assert_nothing_escaped(&p, &host, &[]);
}

#[test]
fn a_step_ignoring_the_stop_signal_is_killed_after_the_grace_period() {
    let _serial = serial();
    let host = Host::new();
    let step = unique("term-ignored");
    let p = Project::new(&workflow(&step, "trap '' TERM; echo started; while true; do sleep 1; done", "1s"));
    let mut engine = Running::start(p.cmd(&["run"]));
    engine.wait_stdout("started", Duration::from_secs(60));
    let (status, took) = engine.exit_within(Duration::from_secs(30));
    let err = engine.err();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("timed out after 1s"), "{err}");
    // The 1 s timeout (counted from the start, about when `started` was printed), then the
    // grace, then SIGKILL and removal.
    let grace = engine::docker::DEFAULT_STOP_GRACE;
    assert!(took >= grace, "killed before the grace period ended: {took:?}");
    assert!(took < Duration::from_secs(12), "took {took:?}");
    assert_nothing_escaped(&p, &host, &[]);
}

#[test]
fn ctrl_c_gives_the_running_step_the_stop_signal_then_exits_130() {
    let _serial = serial();
    let host = Host::new();
    let step = unique("term-int");
    let p = Project::new(&workflow(&step, "trap 'echo got TERM; exit 0' TERM; echo started; while true; do sleep 1; done", "10m"));
    let mut engine = Running::start(p.cmd(&["run"]));
    engine.wait_stdout("started", Duration::from_secs(60));
    engine.signal(libc::SIGINT);
    let (status, took) = engine.exit_within(Duration::from_secs(20));
    let err = engine.err();
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(engine.out().contains("got TERM"), "the step never saw SIGTERM: {}", engine.out());
    assert!(took < Duration::from_secs(8), "took {took:?}");
    assert!(!err.contains("may be left behind"), "{err}");
    assert!(containers(&format!("engine.step={step}")).is_empty());
    assert_nothing_escaped(&p, &host, &[]);
}

#[test]
fn a_second_ctrl_c_kills_the_step_without_waiting_for_the_grace_period() {
    let _serial = serial();
    let host = Host::new();
    let step = unique("term-int2");
    // Traps TERM, says so, and carries on: only SIGKILL ends it.
    let p = Project::new(&workflow(&step, "trap 'echo got TERM' TERM; echo started; while true; do sleep 1; done", "10m"));
    let mut cmd = p.cmd(&["run"]);
    cmd.env("ENGINE_STOP_GRACE", "60s");
    let mut engine = Running::start(cmd);
    engine.wait_stdout("started", Duration::from_secs(60));
    engine.signal(libc::SIGINT);
    engine.wait_stdout("got TERM", Duration::from_secs(10));
    engine.signal(libc::SIGINT);
    let (status, took) = engine.exit_within(Duration::from_secs(10));
    let err = engine.err();
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(took < Duration::from_secs(4), "took {took:?}: {err}");
    assert!(err.contains("interrupted again"), "{err}");
    assert!(containers(&format!("engine.step={step}")).is_empty(), "the second Ctrl-C removed the container");
    // The run's temporary folder is left to `engine clean`, which says so.
    clean_then_check(&p, &host, &step);
}

#[test]
fn invalid_daemon_deadline_settings_are_refused_with_exit_3() {
    let _serial = serial();
    let host = Host::new();
    let p = Project::new(&workflow("a", "true", "10s"));
    for (var, value) in [("ENGINE_DOCKER_TIMEOUT", "soon"), ("ENGINE_DOCKER_TIMEOUT", "0"), ("ENGINE_STOP_GRACE", "forever")] {
        let o = p.cmd(&["run"]).env(var, value).output().unwrap();
        let err = text(&o.stderr);
        assert_eq!(code(&o), 3, "{var}={value}: {err}");
        assert!(err.contains(&format!("{var} must be a duration")) && err.contains(&format!("not `{value}`")), "{err}");
    }
    assert_nothing_escaped(&p, &host, &[]);
}
