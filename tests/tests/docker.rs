//! The Docker executor against the real daemon: isolation defaults observed from inside the
//! container, workspace and outputs for both transfers, failures (exit, timeout, OOM,
//! cancellation, missing image, unsafe outputs), secrets, cache mounts, labels and cleanup.

use std::collections::HashMap;
use std::time::Duration;

use engine::docker::{
    container_name, DockerExecutor, Transfer, LABEL_CACHE, LABEL_HOST, LABEL_PID, LABEL_PID_START, LABEL_RUN, LABEL_STEP,
};
use engine::executor::StepFailure;
use integration::*;
use tokio_util::sync::CancellationToken;

/// Runs `$name(Transfer)` once per transfer, as `$name::bind` and `$name::archive`.
macro_rules! both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread")]
            async fn bind() {
                super::$name(engine::docker::Transfer::Bind).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn archive() {
                super::$name(engine::docker::Transfer::Archive).await
            }
        }
    )*};
}

both!(
    isolation_defaults,
    inputs_and_outputs,
    missing_output,
    symlink_to_file_outside,
    symlink_dir_escape,
    dir_containing_escaping_symlink,
    output_through_symlinked_folder,
    secrets_are_files_and_masked,
    labels_while_running_and_cancel,
    cache_mounts_persist_across_runs,
    non_zero_exit,
    timeout_kills_promptly,
    out_of_memory,
);

const PROBE: &str = r#"
echo net=$(ls /sys/class/net | tr '\n' ' ')
touch /x 2>/dev/null && echo rootfs=rw || echo rootfs=ro
touch /workspace/new 2>/dev/null && echo ws=rw || echo ws=ro
echo wsowner=$(stat -c %u:%g /workspace)
echo tmp=$(grep ' /tmp ' /proc/mounts)
printf '#!/bin/sh\necho yes\n' > /tmp/x.sh && chmod +x /tmp/x.sh && echo tmpexec=$(/tmp/x.sh 2>/dev/null || echo no)
echo capeff=$(grep CapEff /proc/self/status | cut -f2)
echo capbnd=$(grep CapBnd /proc/self/status | cut -f2)
echo nnp=$(grep NoNewPrivs /proc/self/status | cut -f2)
echo id=$(id -u):$(id -g)
if [ -f /sys/fs/cgroup/memory.max ]; then
  echo mem=$(cat /sys/fs/cgroup/memory.max)
  echo swap=$(cat /sys/fs/cgroup/memory.swap.max)
  echo pids=$(cat /sys/fs/cgroup/pids.max)
  echo cpu=$(cut -d' ' -f1 /sys/fs/cgroup/cpu.max)
else
  echo mem=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes)
  [ -f /sys/fs/cgroup/memory/memory.memsw.limit_in_bytes ] && echo memsw=$(cat /sys/fs/cgroup/memory/memory.memsw.limit_in_bytes)
  echo pids=$(cat /sys/fs/cgroup/pids/pids.max)
  echo cpu=$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us)
fi
"#;

async fn isolation_defaults(transfer: Transfer) {
    let exec = executor(transfer).await;
    let fx = Fixture::new("iso");
    let mut s = step("probe", PROBE);
    s.limits.memory = 64 << 20;
    s.limits.pids = 64;
    s.limits.millicpus = 500;
    s.limits.tmpfs = 16 << 20;
    let ran = run(&exec, fx.job(s, &[])).await;
    assert_eq!(ran.outcome.result, Ok(()), "{:?}", ran.events);
    let v = ran.values();
    let get = |k: &str| v.get(k).map(String::as_str).unwrap_or_else(|| panic!("no `{k}` in {v:?}"));
    assert_eq!(get("net").trim(), "lo", "only loopback");
    assert_eq!(get("rootfs"), "ro");
    assert_eq!(get("ws"), "rw");
    assert_eq!(get("wsowner"), "1000:1000");
    let tmp = get("tmp");
    assert!(tmp.starts_with("tmpfs /tmp tmpfs"), "{tmp}");
    assert!(tmp.contains("size=16384k") && tmp.contains("nosuid") && tmp.contains("nodev"), "{tmp}");
    // Executable, as in a plain `docker run`: rustdoc, cc and test runners run programs from /tmp.
    assert!(!tmp.contains("noexec"), "{tmp}");
    assert_eq!(get("tmpexec"), "yes", "a program written to /tmp runs");
    assert_eq!(get("capeff"), "0000000000000000");
    assert_eq!(get("capbnd"), "0000000000000000");
    assert_eq!(get("nnp"), "1");
    assert_eq!(get("id"), "1000:1000");
    assert_eq!(get("mem"), (64u64 << 20).to_string());
    if let Some(swap) = v.get("swap") {
        assert_eq!(swap, "0", "no swap (cgroup v2)");
    }
    if let Some(memsw) = v.get("memsw") {
        assert_eq!(memsw, &(64u64 << 20).to_string(), "no swap (cgroup v1)");
    }
    assert_eq!(get("pids"), "64");
    assert_eq!(get("cpu"), "50000");
    assert_clean(&exec, &fx.run_id).await;
}

async fn inputs_and_outputs(transfer: Transfer) {
    let exec = executor(transfer).await;
    let fx = Fixture::new("io");
    fx.input("src/in.txt", "hello input\n");
    let mut s = step(
        "build",
        "cat /workspace/src/in.txt && echo env=$GREETING && echo pwd=$(pwd) && cd /workspace \
         && mkdir -p build dist/sub && cp src/in.txt build/out.txt \
         && echo nested > dist/sub/n.txt && ln -s sub/n.txt dist/link",
    );
    s.outputs = vec!["build/out.txt".into(), "dist".into()];
    s.env.insert("GREETING".into(), "hi there".into());
    s.workdir = "/workspace/src".into();
    let ran = run(&exec, fx.job(s, &[])).await;
    assert_eq!(ran.outcome.result, Ok(()), "{:?}", ran.events);
    assert_eq!(ran.outcome.exit_code, Some(0));
    assert_eq!(ran.stdout(), vec!["hello input", "env=hi there", "pwd=/workspace/src"]);
    assert_eq!(fx.collected("build/out.txt"), "hello input\n");
    assert_eq!(fx.collected("dist/sub/n.txt"), "nested\n");
    let link = std::fs::read_link(fx.collect.path().join("dist/link")).expect("link collected as a link");
    assert_eq!(link.to_string_lossy(), "sub/n.txt");
    assert!(!exists(&fx.collect.path().join("src")), "only declared outputs are collected");
    assert_clean(&exec, &fx.run_id).await;
}

async fn missing_output(transfer: Transfer) {
    let mut s = step("m", "true");
    s.outputs = vec!["nope/file".into()];
    let ran = run_alone(transfer, "missing", s).await;
    assert_eq!(ran.outcome.result, Err(StepFailure::MissingOutput("nope/file".into())));
}

/// The step's output is rejected naming `out`, and nothing lands in collect_to.
async fn assert_unsafe(transfer: Transfer, script: &str, output: &str) {
    let exec = executor(transfer).await;
    let fx = Fixture::new("unsafe");
    let mut s = step("u", script);
    s.outputs = vec![output.into()];
    let ran = run(&exec, fx.job(s, &[])).await;
    match &ran.outcome.result {
        Err(f @ StepFailure::UnsafeOutput { path, .. }) => {
            assert_eq!(path, output);
            assert!(f.to_string().contains(output), "{f}");
        }
        other => panic!("expected UnsafeOutput, got {other:?}"),
    }
    let written: Vec<_> = std::fs::read_dir(fx.collect.path()).expect("read collect").collect();
    assert!(written.is_empty(), "nothing is written for a rejected output");
    assert_clean(&exec, &fx.run_id).await;
}

async fn symlink_to_file_outside(transfer: Transfer) {
    assert_unsafe(transfer, "ln -s /etc/passwd out", "out").await;
}

async fn symlink_dir_escape(transfer: Transfer) {
    assert_unsafe(transfer, "ln -s ../../etc out", "out").await;
}

async fn dir_containing_escaping_symlink(transfer: Transfer) {
    assert_unsafe(transfer, "mkdir d && echo ok > d/fine && ln -s /etc d/x", "d").await;
}

async fn output_through_symlinked_folder(transfer: Transfer) {
    // `a/passwd` would be read through `a -> /etc`: the host's /etc for the bind transfer.
    assert_unsafe(transfer, "ln -s /etc a", "a/passwd").await;
}

async fn secrets_are_files_and_masked(transfer: Transfer) {
    let exec = executor(transfer).await;
    let fx = Fixture::new("secret");
    let mut s = step(
        "sec",
        "cat /run/secrets/API_TOKEN; echo; echo mode=$(stat -c %a:%u:%g /run/secrets/API_TOKEN); \
         echo token is $(cat /run/secrets/API_TOKEN) >&2",
    );
    s.secrets = vec!["API_TOKEN".into()];
    let ran = run(&exec, fx.job(s, &[("API_TOKEN", "s3cr3t-value")])).await;
    assert_eq!(ran.outcome.result, Ok(()), "{:?}", ran.events);
    let out = ran.stdout();
    assert_eq!(out[0], "***", "the step reads the secret; the log shows it masked");
    assert_eq!(ran.values().get("mode").map(String::as_str), Some("400:1000:1000"));
    assert_eq!(ran.lines(engine::events::Stream::Stderr), vec!["token is ***"]);
    let all = format!("{:?}", ran.events);
    assert!(!all.contains("s3cr3t-value"), "secret leaked: {all}");
    assert_clean(&exec, &fx.run_id).await;
}

async fn labels_while_running_and_cancel(transfer: Transfer) {
    let exec = executor(transfer).await;
    let fx = Fixture::new("labels");
    let job = fx.job(step("wait", "sleep 30"), &[]);
    // Only the engine's own mounts: /workspace, /run/secrets and the step's cache paths.
    let allowed: Vec<String> =
        ["/workspace", "/run/secrets"].into_iter().map(String::from).chain(job.caches.iter().map(|c| c.path.clone())).collect();
    let cancel = CancellationToken::new();
    let running = tokio::spawn({
        let exec = executor(transfer).await;
        let cancel = cancel.clone();
        async move { run_with(&exec, job, cancel).await }
    });
    let filter = format!("label={LABEL_RUN}={}", fx.run_id);
    let id = poll(Duration::from_secs(20), "the running container", || {
        let filter = filter.clone();
        async move { docker_cli(&["ps", "-q", "--no-trunc", "--filter", &filter]).await.ok()?.lines().next().map(String::from) }
    })
    .await;
    let inspected = docker_inspect(&["inspect", &id]).await.expect("inspect");
    let labels: HashMap<String, String> = serde_json::from_value(inspected["Config"]["Labels"].clone()).unwrap_or_default();
    assert_eq!(labels.get(LABEL_STEP).map(String::as_str), Some("wait"));
    assert_eq!(labels.get(LABEL_PID), Some(&std::process::id().to_string()));
    assert!(labels.get(LABEL_PID_START).is_some_and(|s| s.parse::<u64>().is_ok_and(|n| n > 0)));
    assert!(labels.contains_key(LABEL_HOST));
    let name = format!("/{}", container_name(&fx.run_id, "wait"));
    assert_eq!(inspected["Name"].as_str(), Some(name.as_str()));

    // What the daemon was asked for: never privileged, never the host's network or the docker
    // socket, nothing mounted but /workspace (and /run/secrets, caches), every capability dropped.
    let host = &inspected["HostConfig"];
    assert_ne!(host["Privileged"].as_bool(), Some(true));
    assert_eq!(host["NetworkMode"].as_str(), Some("none"));
    assert_eq!(host["ReadonlyRootfs"].as_bool(), Some(true));
    assert_eq!(host["CapDrop"], serde_json::json!(["ALL"]));
    assert!(host["CapAdd"].as_array().is_none_or(|caps| caps.is_empty()));
    assert!(host["SecurityOpt"].as_array().is_some_and(|opts| opts.iter().any(|o| o == "no-new-privileges")));
    assert_eq!(host["MemorySwap"], host["Memory"], "no swap");
    let mounts = inspected["Mounts"].as_array().cloned().unwrap_or_default();
    let targets: Vec<String> = mounts.iter().filter_map(|m| m["Destination"].as_str().map(String::from)).collect();
    assert!(targets.iter().all(|t| allowed.contains(t)), "{targets:?}");
    assert!(mounts.iter().all(|m| !m["Source"].as_str().unwrap_or_default().contains("docker.sock")));
    if transfer == Transfer::Archive {
        let (_, volumes) = leftovers(&exec, &fx.run_id).await;
        assert!(!volumes.is_empty(), "the workspace volume carries the run label");
    }
    cancel.cancel();
    let ran = tokio::time::timeout(Duration::from_secs(10), running).await.expect("cancel is prompt").expect("join");
    assert_eq!(ran.outcome.result, Err(StepFailure::Cancelled));
    assert_clean(&exec, &fx.run_id).await;
}

/// Run `s` alone in a fresh fixture and check that nothing of it remains afterwards.
async fn run_alone(transfer: Transfer, test: &str, s: dsl::Step) -> Ran {
    let exec = executor(transfer).await;
    let fx = Fixture::new(test);
    let ran = run(&exec, fx.job(s, &[])).await;
    assert_clean(&exec, &fx.run_id).await;
    ran
}

async fn non_zero_exit(transfer: Transfer) {
    let ran = run_alone(transfer, "exit", step("fail", "echo partial; printf 'no newline'; exit 3")).await;
    assert_eq!(ran.outcome.result, Err(StepFailure::Exit(3)));
    assert_eq!(ran.outcome.exit_code, Some(3));
    assert_eq!(ran.stdout(), vec!["partial", "no newline"], "partial last line is flushed");
}

async fn timeout_kills_promptly(transfer: Transfer) {
    let mut s = step("slow", "sleep 30");
    s.limits.timeout = Duration::from_secs(1);
    let ran = run_alone(transfer, "timeout", s).await;
    assert_eq!(ran.outcome.result, Err(StepFailure::TimedOut(Duration::from_secs(1))));
    assert_eq!(ran.outcome.result.as_ref().err().map(ToString::to_string).as_deref(), Some("timed out after 1s"));
    // `sleep` is the container's PID 1 and ignores SIGTERM: it is killed after the stop grace.
    let bound = Duration::from_secs(1) + engine::docker::DEFAULT_STOP_GRACE + Duration::from_secs(4);
    assert!(ran.elapsed < bound, "took {:?}", ran.elapsed);
}

async fn out_of_memory(transfer: Transfer) {
    // One 100M buffer, touched at once by the read: over the limit immediately, whatever the load
    // (a slowly growing pipe buffer can take a minute under CPU throttling).
    let mut s = step("hog", "dd if=/dev/zero of=/dev/null bs=100M count=1");
    s.limits.memory = 32 << 20;
    let ran = run_alone(transfer, "oom", s).await;
    let failure = ran.outcome.result.clone().expect_err("the step fails");
    assert_eq!(failure, StepFailure::OutOfMemory { limit: 32 << 20 });
    assert_eq!(failure.to_string(), "killed: out of memory (limit 32m)");
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelled_before_start_creates_nothing() {
    let exec = executor(Transfer::Archive).await;
    let fx = Fixture::new("precancel");
    let cancel = CancellationToken::new();
    cancel.cancel();
    let ran = run_with(&exec, fx.job(step("c", "true"), &[]), cancel).await;
    assert_eq!(ran.outcome.result, Err(StepFailure::Cancelled));
    assert_clean(&exec, &fx.run_id).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_image_is_an_environment_error() {
    for transfer in [Transfer::Bind, Transfer::Archive] {
        let exec = executor(transfer).await;
        let fx = Fixture::new("noimage");
        let err = exec.check_image("local/no-such-image:1").await.expect_err("image is missing");
        assert!(err.0.contains("`local/no-such-image:1`") && err.0.contains("docker pull local/no-such-image:1"), "{err}");
        let mut s = step("x", "true");
        s.image = dsl::ImageRef::Reference("local/no-such-image:1".into());
        let ran = run(&exec, fx.job(s, &[])).await;
        match ran.outcome.result {
            Err(StepFailure::Environment(msg)) => assert!(msg.contains("local/no-such-image:1"), "{msg}"),
            other => panic!("expected an environment failure, got {other:?}"),
        }
        assert_clean(&exec, &fx.run_id).await;
    }
}

/// The archive transfer streams the workspace while packing it: a workspace that cannot be packed
/// fails the upload with that cause, at once (no hang on a half-sent body), and leaves nothing.
#[tokio::test(flavor = "multi_thread")]
async fn an_unpackable_workspace_fails_the_archive_upload_with_its_cause() {
    let exec = executor(Transfer::Archive).await;
    let fx = Fixture::new("unpackable");
    let mut job = fx.job(step("x", "true"), &[]);
    job.workspace = fx.workspace.path().join("gone");
    let ran = tokio::time::timeout(Duration::from_secs(60), run(&exec, job)).await.expect("the failed upload ends");
    match ran.outcome.result {
        Err(StepFailure::Environment(msg)) => {
            assert!(msg.starts_with("cannot pack the workspace on this host: "), "{msg}");
            assert!(msg.contains("No such file or directory"), "{msg}");
        }
        other => panic!("expected an environment failure, got {other:?}"),
    }
    assert_clean(&exec, &fx.run_id).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn busybox_hint_names_the_import_script() {
    let exec = executor(Transfer::Bind).await;
    exec.check_image(BUSYBOX).await.expect("busybox is present");
    let err = exec.check_image("local/nothing-here:9").await.expect_err("missing");
    assert!(err.0.contains("docker load") || err.0.contains("docker import"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_daemon_is_one_clear_sentence() {
    let Err(err) = DockerExecutor::connect_to("unix:///nonexistent/engine-test.sock").await else {
        panic!("connecting to a missing socket must fail");
    };
    let msg = err.to_string();
    assert!(msg.starts_with("cannot reach the Docker daemon at unix:///nonexistent/engine-test.sock: "), "{msg}");
    assert!(msg.contains("sudo systemctl start docker") && msg.contains("DOCKER_HOST"), "{msg}");
    assert!(!msg.contains('\n') && !msg.contains("Error {") && !msg.contains("Os {"), "{msg}");
    println!("{msg}");
}

#[tokio::test(flavor = "multi_thread")]
async fn host_budget_from_daemon() {
    let exec = executor(Transfer::Bind).await;
    let budget = exec.host_budget().await.expect("budget");
    assert!(budget.millicpus >= 1000 && budget.millicpus % 1000 == 0);
    assert!(budget.memory > 64 << 20);
}

#[tokio::test(flavor = "multi_thread")]
async fn transfer_timing() {
    // Not an assertion on speed (tests share the daemon); prints the per-step time of each
    // transfer for a small workspace so that regressions are visible with --nocapture.
    for transfer in [Transfer::Bind, Transfer::Archive] {
        let exec = executor(transfer).await;
        let mut total = Duration::ZERO;
        const N: u32 = 3;
        for _ in 0..N {
            let fx = Fixture::new("timing");
            for i in 0..50 {
                fx.input(&format!("src/f{i}.txt"), &"x".repeat(1000));
            }
            let mut s = step("t", "mkdir out && cp src/f1.txt out/");
            s.outputs = vec!["out".into()];
            let ran = run(&exec, fx.job(s, &[])).await;
            assert_eq!(ran.outcome.result, Ok(()));
            total += ran.elapsed;
            assert_clean(&exec, &fx.run_id).await;
        }
        println!("transfer {transfer:?}: {:?} per step", total / N);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn dropped_step_still_removes_its_container() {
    for transfer in [Transfer::Bind, Transfer::Archive] {
        let exec = executor(transfer).await;
        let fx = Fixture::new("dropped");
        let job = fx.job(step("abandoned", "sleep 30"), &[]);
        let task = tokio::spawn({
            let exec = executor(transfer).await;
            async move { run(&exec, job).await }
        });
        poll(Duration::from_secs(20), "the running container", || {
            let exec = &exec;
            let run_id = fx.run_id.clone();
            async move {
                let (containers, _) = leftovers(exec, &run_id).await;
                (!containers.is_empty()).then_some(())
            }
        })
        .await;
        // Dropping the future mid-run (the scheduler gave up on it) must not leak the container.
        task.abort();
        let _ = task.await;
        poll(Duration::from_secs(20), "removal after drop", || {
            let exec = &exec;
            let run_id = fx.run_id.clone();
            async move {
                let (containers, volumes) = leftovers(exec, &run_id).await;
                (containers.is_empty() && volumes.is_empty()).then_some(())
            }
        })
        .await;
    }
}

/// The `sandbox` profile keeps /tmp `noexec`: a program written there does not run.
#[tokio::test(flavor = "multi_thread")]
async fn sandbox_tmp_is_not_executable() {
    let exec = executor(Transfer::Bind).await;
    let fx = Fixture::new("sandboxtmp");
    let mut s = step("probe", PROBE);
    s.profile = Some("sandbox".into());
    let ran = run(&exec, fx.job(s, &[])).await;
    assert_eq!(ran.outcome.result, Ok(()), "{:?}", ran.events);
    let v = ran.values();
    assert!(v["tmp"].contains("noexec") && v["tmp"].contains("nosuid"), "{}", v["tmp"]);
    assert_eq!(v["tmpexec"], "no", "a program written to /tmp does not run");
    assert_clean(&exec, &fx.run_id).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bridge_network_when_asked() {
    let mut s = step("net", "ls /sys/class/net | sort | tr '\\n' ' '");
    s.isolation.network = dsl::Network::Bridge;
    let ran = run_alone(Transfer::Bind, "bridge", s).await;
    assert_eq!(ran.outcome.result, Ok(()));
    assert_eq!(ran.stdout(), vec!["eth0 lo "]);
}

/// A cache written by one run is seen by a later run naming it (fresh workspace, new run id),
/// not by a step naming another cache; the step user owns it; only the cache itself outlives
/// the runs (and this test removes it).
async fn cache_mounts_persist_across_runs(transfer: Transfer) {
    let exec = executor(transfer).await;
    let cache_root = tempfile::tempdir().expect("cache root");
    let (shared, other) = (run_id("cache-a"), run_id("cache-b"));
    let path = "/home/user/.cache/tool";
    let mut runs = Vec::new();
    let scripts = [
        (&shared, "echo owner=$(stat -c %u:%g /home/user/.cache/tool) && echo hello > /home/user/.cache/tool/note && mkdir /home/user/.cache/tool/sub && echo wrote=yes"),
        (&shared, "echo note=$(cat /home/user/.cache/tool/note) && ls -d /home/user/.cache/tool/sub"),
        (&other, "echo entries=$(ls -A /home/user/.cache/tool | wc -l)"),
    ];
    for (name, script) in scripts {
        let fx = Fixture::new("cache");
        let ran = run(&exec, fx.job_with_caches(step("c", script), &[(name.as_str(), path)], cache_root.path())).await;
        runs.push((fx.run_id.clone(), ran));
    }
    let volume = docker_inspect(&["volume", "inspect", &engine::docker::cache_volume_name(&shared)]).await;
    remove_cache_volumes(&exec, &[&shared, &other]).await;

    for (run_id, _) in &runs {
        assert_clean(&exec, run_id).await;
    }
    let values: Vec<_> = runs.iter().map(|(_, ran)| (ran.outcome.result.clone(), ran.values())).collect();
    assert_eq!(values[0].0, Ok(()), "{:?}", runs[0].1.events);
    assert_eq!(values[0].1.get("owner").map(String::as_str), Some("1000:1000"));
    assert_eq!(values[0].1.get("wrote").map(String::as_str), Some("yes"));
    assert_eq!(values[1].0, Ok(()), "{:?}", runs[1].1.events);
    assert_eq!(values[1].1.get("note").map(String::as_str), Some("hello"));
    assert_eq!(values[2].0, Ok(()), "{:?}", runs[2].1.events);
    assert_eq!(values[2].1.get("entries").map(String::as_str), Some("0"));
    match transfer {
        Transfer::Archive => {
            let labels: HashMap<String, String> =
                serde_json::from_value(volume.expect("the cache volume survived the run")["Labels"].clone()).unwrap_or_default();
            assert_eq!(labels.get(LABEL_CACHE), Some(&shared));
            assert!(!labels.contains_key(LABEL_RUN), "the cache volume must not carry the run label");
        }
        Transfer::Bind => {
            assert!(volume.is_err(), "the bind transfer uses host folders, not volumes");
            let note = std::fs::read_to_string(cache_root.path().join(&shared).join("note")).expect("cache folder kept");
            assert_eq!(note, "hello\n");
        }
    }
}
