//! Hostile cases: images. Image build stages and Dockerfile builds are bound by the operator
//! policy (root, networks, image prefixes, limits), hardened like steps where a build allows, and
//! read nothing outside the workflow's folder.

use std::process::Command;
use std::time::{Duration, Instant};

#[allow(unused_imports)]
use crate::common::{hostile::*, *};

/// The harness's escape check looks for the host marker in every `engine-*` folder of the temp
/// dir, which includes the `Host` folders of tests running at the same time: this module's tests
/// run one at a time.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Removes every image a test built (final and stage images carry `engine.image=<name>`).
struct Built(Vec<String>);

impl Drop for Built {
    fn drop(&mut self) {
        for name in &self.0 {
            let o = Command::new("docker").args(["images", "-aq", "--filter", &format!("label=engine.image={name}")]).output();
            let ids: Vec<String> = o.map(|o| text(&o.stdout).lines().map(str::to_string).collect()).unwrap_or_default();
            if !ids.is_empty() {
                let _ = Command::new("docker").arg("rmi").arg("-f").args(&ids).output();
            }
        }
    }
}

/// A unique, valid image name (also the workflow name, so tags do not collide).
fn name(prefix: &str) -> String {
    unique(prefix).to_lowercase()
}

/// A workflow with one stage image `img` built from `stage` (YAML lines under `- name: s`, each
/// indented 8 spaces) and a step `use` running `step` on it.
fn stage_workflow(img: &str, stage: &str, step: &str) -> String {
    format!(
        "version: 1\nname: {img}\nimages:\n  {img}:\n    stages:\n      - name: s\n        from: {IMAGE}\n{stage}steps:\n  use:\n    image: {img}\n    run: {step}\n"
    )
}

fn out_err(o: &std::process::Output) -> String {
    format!("{}\n{}", text(&o.stdout), text(&o.stderr))
}

/// Rendered diagnostics wrap long messages (`\n  | ` continuations): one line per message, for
/// matching whole sentences.
fn flat(rendered: &str) -> String {
    rendered.lines().map(|l| l.trim_start().trim_start_matches('|').trim()).collect::<Vec<_>>().join(" ")
}

#[test]
fn root_stage_under_a_policy_without_root_is_refused_at_the_stage_naming_the_policy_line() {
    let _serial = serial();
    let host = Host::new();
    let img = name("rootstage");
    let _built = Built(vec![img.clone()]);
    let p = Project::new(&stage_workflow(&img, "        run: id\n", "true"));
    p.write("policy.yml", "version: 1\nallow_root: false\n");
    let o = p.run(&["run", "--policy", "policy.yml"]);
    let err = flat(&text(&o.stderr));
    assert_eq!(code(&o), 2, "{err}");
    assert!(
        err.contains(&format!("image `{img}`, stage `s` runs as root (uid 0), which the policy does not allow for image builds")),
        "{err}"
    );
    assert!(err.contains("workflow.yml:6:"), "the stage line: {err}");
    assert!(err.contains("policy.yml:2:"), "the policy line: {err}");
    // `engine images build` is bound by the same policy.
    let o = p.run(&["images", "build", "--policy", "policy.yml"]);
    assert_eq!(code(&o), 2, "{}", text(&o.stderr));
    assert!(flat(&text(&o.stderr)).contains("runs as root (uid 0), which the policy does not allow"), "{}", text(&o.stderr));
    // Any spelling of uid 0 is root too; a numeric non-root user is accepted.
    p.write("workflow.yml", &stage_workflow(&img, "        user: \"00:5\"\n        run: id\n", "true"));
    let o = p.run(&["check", "--policy", "policy.yml"]);
    assert_eq!(code(&o), 2, "{}", text(&o.stderr));
    assert!(flat(&text(&o.stderr)).contains("runs as root (uid 0)"), "{}", text(&o.stderr));
    p.write("workflow.yml", &stage_workflow(&img, "        user: \"1000:1000\"\n        run: id\n", "true"));
    let o = p.run(&["check", "--policy", "policy.yml"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    // A Dockerfile image cannot be held to a user: refused under the same policy.
    p.write("Dockerfile", &format!("FROM {IMAGE}\n"));
    p.write("workflow.yml", "version: 1\nimages:\n  df:\n    dockerfile: Dockerfile\nsteps:\n  use: { image: df, run: 'true' }\n");
    let o = p.run(&["run", "--policy", "policy.yml"]);
    let err = flat(&text(&o.stderr));
    assert_eq!(code(&o), 2, "{err}");
    assert!(err.contains("image `df` is built from a Dockerfile, which the policy does not allow without root builds"), "{err}");
    assert!(err.contains("cannot be held to a non-root user"), "{err}");
    assert_nothing_escaped(&p, &host, &[]);
}

#[test]
fn root_stage_with_allow_root_builds_keeps_only_the_build_capabilities_and_no_new_privileges() {
    let _serial = serial();
    let host = Host::new();
    let img = name("capstage");
    let _built = Built(vec![img.clone()]);
    let stage = format!("        run: awk '/^(CapEff|CapBnd|NoNewPrivs)/ {{ print \"cap-{img}:\" $1 $2 }}' /proc/self/status\n");
    let p = Project::new(&stage_workflow(&img, &stage, "true"));
    p.write("policy.yml", "version: 1\nallow_root: false\nallow_root_builds: true\n");
    let o = p.run(&["run", "--policy", "policy.yml"]);
    let out = out_err(&o);
    assert_eq!(code(&o), 0, "{out}");
    // CHOWN 0, DAC_OVERRIDE 1, FOWNER 3, FSETID 4, SETGID 6, SETUID 7: 0xdb, nothing else.
    assert!(out.contains(&format!("cap-{img}:CapEff:00000000000000db")), "{out}");
    assert!(out.contains(&format!("cap-{img}:CapBnd:00000000000000db")), "{out}");
    assert!(out.contains(&format!("cap-{img}:NoNewPrivs:1")), "{out}");
    assert_nothing_escaped(&p, &host, &[]);
}

#[test]
fn non_root_stage_has_no_capabilities() {
    let _serial = serial();
    let host = Host::new();
    let img = name("nocapstage");
    let _built = Built(vec![img.clone()]);
    let stage = format!("        user: \"1000:1000\"\n        run: awk '/^CapEff/ {{ print \"cap-{img}:\" $1 $2 }}' /proc/self/status\n");
    let p = Project::new(&stage_workflow(&img, &stage, "true"));
    let o = p.run(&["run"]);
    let out = out_err(&o);
    assert_eq!(code(&o), 0, "{out}");
    assert!(out.contains(&format!("cap-{img}:CapEff:0000000000000000")), "{out}");
    assert_nothing_escaped(&p, &host, &[]);
}

#[test]
fn stage_asking_for_bridge_under_a_policy_of_no_network_is_refused() {
    let _serial = serial();
    let host = Host::new();
    let img = name("bridgestage");
    let p = Project::new(&stage_workflow(&img, "        network: bridge\n        run: id\n", "true"));
    p.write("policy.yml", "version: 1\nnetworks: [none]\nallow_root_builds: true\n");
    let o = p.run(&["run", "--policy", "policy.yml"]);
    let err = flat(&text(&o.stderr));
    assert_eq!(code(&o), 2, "{err}");
    assert!(err.contains(&format!("image `{img}`, stage `s` asks for network bridge, which the policy does not allow")), "{err}");
    assert!(err.contains("workflow.yml:8:"), "the stage's network line: {err}");
    assert!(err.contains("policy.yml:2:"), "the policy line: {err}");
    // A Dockerfile image's network is checked the same way.
    p.write("Dockerfile", &format!("FROM {IMAGE}\n"));
    p.write(
        "workflow.yml",
        "version: 1\nimages:\n  df:\n    dockerfile: Dockerfile\n    network: bridge\nsteps:\n  use: { image: df, run: 'true' }\n",
    );
    let o = p.run(&["run", "--policy", "policy.yml"]);
    let err = flat(&text(&o.stderr));
    assert_eq!(code(&o), 2, "{err}");
    assert!(err.contains("image `df` asks for network bridge, which the policy does not allow"), "{err}");
    assert_nothing_escaped(&p, &host, &[]);
}

/// No traffic leaves this machine in tests: "no network" is proven by the interfaces a build
/// container has (loopback only), against a bridge stage that has more.
#[test]
fn stages_and_dockerfile_builds_have_no_network_unless_they_ask() {
    let _serial = serial();
    let host = Host::new();
    let (img, df) = (name("nonet"), name("nonetdf"));
    let _built = Built(vec![img.clone(), df.clone()]);
    let p = Project::new(&format!(
        "version: 1\nname: {img}\nimages:\n  {img}:\n    stages:\n      - name: none\n        from: {IMAGE}\n        run: echo \"net-{img}-none:$(ls /sys/class/net | tr '\\n' ' ')\"\n      - name: bridge\n        from: none\n        network: bridge\n        run: echo \"net-{img}-bridge:$(ls /sys/class/net | tr '\\n' ' ')\"\n  {df}:\n    dockerfile: Dockerfile\nsteps:\n  a: {{ image: {img}, run: 'true' }}\n  b: {{ image: {df}, run: 'true' }}\n"
    ));
    p.write("Dockerfile", &format!("FROM {IMAGE}\nRUN echo \"net-{df}:$(ls /sys/class/net | tr '\\n' ' ')\"\n"));
    let o = p.run(&["run"]);
    let out = out_err(&o);
    assert_eq!(code(&o), 0, "{out}");
    assert!(out.contains(&format!("net-{img}-none:lo \n")) || out.contains(&format!("net-{img}-none:lo ")), "{out}");
    assert!(!out.contains(&format!("net-{img}-none:lo e")), "{out}");
    let bridge = out.lines().find(|l| l.contains(&format!("| net-{img}-bridge:"))).unwrap_or_default();
    assert!(bridge.contains("eth0"), "the control: a bridge stage has an interface: {out}");
    let dockerfile = out.lines().find(|l| l.contains(&format!("| net-{df}:"))).unwrap_or_default();
    assert!(dockerfile.trim_end().ends_with(&format!("net-{df}:lo")), "a Dockerfile build has loopback only: {out}");
    assert_nothing_escaped(&p, &host, &[]);
}

#[test]
fn stage_over_its_timeout_fails_within_seconds_naming_image_and_stage() {
    let _serial = serial();
    let host = Host::new();
    let img = name("slowstage");
    let _built = Built(vec![img.clone()]);
    let p = Project::new(&stage_workflow(&img, "        limits: { timeout: 2s }\n        run: sleep 100\n", "true"));
    let start = Instant::now();
    let o = p.run(&["run"]);
    let out = out_err(&o);
    assert_eq!(code(&o), 1, "{out}");
    assert!(start.elapsed() < Duration::from_secs(30), "took {:?}", start.elapsed());
    assert!(out.contains(&format!("image `{img}`, stage `s`: `sleep 100` timed out after 2s")), "{out}");
    assert!(containers(&format!("engine.image={img}")).is_empty(), "a build container was left");
    assert_nothing_escaped(&p, &host, &[]);
}

#[test]
fn stage_limits_are_capped_by_the_policy_at_load() {
    let _serial = serial();
    let host = Host::new();
    let img = name("capped");
    let p = Project::new(&stage_workflow(&img, "        limits: { memory: 4g }\n        run: id\n", "true"));
    p.write("policy.yml", "version: 1\nmax_limits: { memory: 2g, timeout: 1h }\nallow_root_builds: true\n");
    let o = p.run(&["run", "--policy", "policy.yml"]);
    let err = flat(&text(&o.stderr));
    assert_eq!(code(&o), 2, "{err}");
    assert!(err.contains(&format!("image `{img}`, stage `s` asks for memory 4g, above the policy's maximum 2g")), "{err}");
    assert!(err.contains("policy.yml:2:"), "{err}");
    // The built-in stage timeout (30m) is checked too.
    p.write("policy.yml", "version: 1\nmax_limits: { timeout: 10m }\nallow_root_builds: true\n");
    p.write("workflow.yml", &stage_workflow(&img, "        run: id\n", "true"));
    let o = p.run(&["check", "--policy", "policy.yml"]);
    let err = flat(&text(&o.stderr));
    assert_eq!(code(&o), 2, "{err}");
    assert!(err.contains("asks for timeout 30m (the built-in default), above the policy's maximum 10m"), "{err}");
    assert_nothing_escaped(&p, &host, &[]);
}

#[test]
fn memory_hog_stage_is_killed_out_of_memory() {
    let _serial = serial();
    let host = Host::new();
    let img = name("hogstage");
    let _built = Built(vec![img.clone()]);
    let p = Project::new(&stage_workflow(
        &img,
        "        limits: { memory: 32m }\n        run: dd if=/dev/zero of=/dev/null bs=100M count=1\n",
        "true",
    ));
    let o = p.run(&["run"]);
    let out = out_err(&o);
    assert_eq!(code(&o), 1, "{out}");
    assert!(
        out.contains(&format!(
            "image `{img}`, stage `s`: `dd if=/dev/zero of=/dev/null bs=100M count=1` was killed: out of memory (limit 32m)"
        )),
        "{out}"
    );
    assert!(containers(&format!("engine.image={img}")).is_empty(), "a build container was left");
    assert_nothing_escaped(&p, &host, &[]);
}

#[test]
fn context_outside_the_workflow_folder_is_refused() {
    let _serial = serial();
    let host = Host::new();
    // The project's parent holds other folders; `..` would send them (and the host file, were it
    // there) to the daemon.
    let p = Project::new("version: 1\nimages:\n  df:\n    dockerfile: Dockerfile\n    context: ..\nsteps:\n  leak: { image: df, run: 'cat /ctx/secret.txt' }\n");
    p.write("Dockerfile", &format!("FROM {IMAGE}\nCOPY . /ctx/\n"));
    let o = p.run(&["run"]);
    let err = flat(&text(&o.stderr));
    assert_eq!(code(&o), 2, "{err}");
    assert!(err.contains("image `df`: `context` `..` contains a `..` component"), "{err}");
    assert!(err.contains("workflow.yml:5:"), "{err}");
    // Through a symlink to the host folder, or an absolute path: refused the same way.
    std::os::unix::fs::symlink(host.path(), p.path().join("hostlink")).unwrap();
    p.write("workflow.yml", "version: 1\nimages:\n  df:\n    dockerfile: Dockerfile\n    context: hostlink\nsteps:\n  leak: { image: df, run: 'cat /ctx/secret.txt' }\n");
    let o = p.run(&["run"]);
    let err = flat(&text(&o.stderr));
    assert_eq!(code(&o), 2, "{err}");
    assert!(err.contains("image `df`: `context` `hostlink` leads outside the workflow folder through a symlink"), "{err}");
    p.write(
        "workflow.yml",
        &format!(
            "version: 1\nimages:\n  df:\n    dockerfile: {}/Dockerfile\nsteps:\n  leak: {{ image: df, run: 'true' }}\n",
            host.path().display()
        ),
    );
    let o = p.run(&["run"]);
    let err = flat(&text(&o.stderr));
    assert_eq!(code(&o), 2, "{err}");
    assert!(err.contains("is absolute"), "{err}");
    // A stage copy through a symlinked folder is refused as well (never reads the host file).
    p.write("workflow.yml", &stage_workflow("cp", "        copy: [{ src: hostlink/secret.txt, dst: /s }]\n", "cat /s"));
    let o = p.run(&["run"]);
    let out = out_err(&o);
    assert_ne!(code(&o), 0, "{out}");
    assert!(out.contains("leads outside the workflow directory through a symlink"), "{out}");
    assert!(!out.contains(HOST_MARKER), "{out}");
    std::fs::remove_file(p.path().join("hostlink")).unwrap();
    assert_nothing_escaped(&p, &host, &[]);
}

#[test]
fn a_context_symlink_to_a_host_file_reaches_the_image_as_a_link_never_as_content() {
    let _serial = serial();
    let host = Host::new();
    let df = name("linkctx");
    let _built = Built(vec![df.clone()]);
    let p = Project::new(&format!(
        "version: 1\nname: {df}\nimages:\n  {df}:\n    dockerfile: Dockerfile\n    context: ctx\nsteps:\n  look:\n    image: {df}\n    run: test -L /ctx/leak && readlink /ctx/leak > link.txt && ! cat /ctx/leak\n    outputs: [link.txt]\n"
    ));
    p.write("Dockerfile", &format!("FROM {IMAGE}\nCOPY . /ctx/\n"));
    p.write("ctx/plain.txt", "plain\n");
    std::os::unix::fs::symlink(host.secret_path(), p.path().join("ctx/leak")).unwrap();
    let o = p.run(&["run"]);
    let out = out_err(&o);
    assert_eq!(code(&o), 0, "{out}");
    assert!(!out.contains(HOST_MARKER), "{out}");
    let link = std::fs::read_to_string(p.path().join(".engine/out/look/link.txt")).unwrap();
    assert_eq!(link.trim(), host.secret_path().display().to_string());
    std::fs::remove_file(p.path().join("ctx/leak")).unwrap();
    assert_nothing_escaped(&p, &host, &[]);
}

#[test]
fn a_fifo_or_device_in_the_context_is_never_read() {
    let _serial = serial();
    let host = Host::new();
    let df = name("fifoctx");
    let _built = Built(vec![df.clone()]);
    let p = Project::new(&format!(
        "version: 1\nname: {df}\nimages:\n  {df}:\n    dockerfile: Dockerfile\n    context: ctx\nsteps:\n  look: {{ image: {df}, run: 'test ! -e /ctx/fifo && cat /ctx/plain.txt' }}\n"
    ));
    p.write("Dockerfile", &format!("FROM {IMAGE}\nCOPY . /ctx/\n"));
    p.write("ctx/plain.txt", "plain\n");
    let fifo = std::ffi::CString::new(p.path().join("ctx/fifo").to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    let mut child = p.spawn(&["run"]);
    wait_for("the engine to finish (it must not block on the FIFO)", Duration::from_secs(180), || child.try_wait().unwrap().is_some());
    let o = child.wait_with_output().unwrap();
    assert_eq!(code(&o), 0, "{}", out_err(&o));
    std::fs::remove_file(p.path().join("ctx/fifo")).unwrap();
    assert_nothing_escaped(&p, &host, &[]);
}

#[test]
fn dockerfile_images_outside_the_policy_prefixes_are_refused_at_the_dockerfile_line() {
    let _serial = serial();
    let host = Host::new();
    let p = Project::new(
        "version: 1\nimages:\n  df:\n    dockerfile: docker/Dockerfile\n    context: docker\nsteps:\n  use: { image: df, run: 'true' }\n",
    );
    p.write("policy.yml", "version: 1\nimage_prefixes: [\"local/\"]\nallow_root_builds: true\n");
    p.write("docker/Dockerfile", &format!("FROM {IMAGE} AS base\nFROM evil/img:1\nRUN true\n"));
    let o = p.run(&["run", "--policy", "policy.yml"]);
    let err = flat(&text(&o.stderr));
    assert_eq!(code(&o), 2, "{err}");
    assert!(err.contains("docker/Dockerfile:2:6"), "{err}");
    assert!(err.contains("the Dockerfile of image `df` (FROM) uses image `evil/img:1`, which the policy does not allow"), "{err}");
    assert!(err.contains("policy.yml:2:"), "{err}");
    // COPY --from an image, and a mount from one, likewise; earlier stage names are fine.
    p.write("docker/Dockerfile", &format!("FROM {IMAGE} AS base\nFROM base\nCOPY --from=base /bin/sh /x\nCOPY --from=evil/img /etc/passwd /p\nRUN --mount=type=bind,from=other/img,target=/m true\n"));
    let o = p.run(&["run", "--policy", "policy.yml"]);
    let err = flat(&text(&o.stderr));
    assert_eq!(code(&o), 2, "{err}");
    assert!(err.contains("docker/Dockerfile:4:6"), "{err}");
    assert!(err.contains("(COPY --from) uses image `evil/img`"), "{err}");
    assert!(err.contains("docker/Dockerfile:5:5"), "{err}");
    assert!(err.contains("(RUN --mount) uses image `other/img`"), "{err}");
    // An unresolvable reference cannot be checked: refused under a prefix policy.
    p.write("docker/Dockerfile", "ARG BASE=local/busybox:1\nFROM ${BASE}\n");
    let o = p.run(&["run", "--policy", "policy.yml"]);
    let err = flat(&text(&o.stderr));
    assert_eq!(code(&o), 2, "{err}");
    assert!(err.contains("docker/Dockerfile:2:6"), "{err}");
    assert!(err.contains("uses image `${BASE}`, which cannot be checked"), "{err}");
    // A Dockerfile reached through a symlink out of the folder is refused before it is read.
    std::fs::remove_file(p.path().join("docker/Dockerfile")).unwrap();
    std::os::unix::fs::symlink(host.secret_path(), p.path().join("docker/Dockerfile")).unwrap();
    let o = p.run(&["run", "--policy", "policy.yml"]);
    let err = flat(&text(&o.stderr));
    assert_eq!(code(&o), 2, "{err}");
    assert!(err.contains("`dockerfile` `docker/Dockerfile` leads outside the workflow folder through a symlink"), "{err}");
    assert!(!err.contains(HOST_MARKER), "{err}");
    std::fs::remove_file(p.path().join("docker/Dockerfile")).unwrap();
    assert_nothing_escaped(&p, &host, &[]);
}

/// The build capability set is enough for a package manager: `apt-get install` of a small
/// package on the Debian base, over `network: bridge`. Needs Debian's mirror from containers, as
/// the stdlib tests do: skipped with the reason when it is absent, a failure when
/// `ENGINE_REQUIRE_NETWORK=1`.
#[test]
fn root_stage_with_the_build_capabilities_still_installs_debian_packages() {
    let _serial = serial();
    ensure_docker();
    let probe = Command::new("docker")
        .args(["run", "--rm", "--network", "bridge", IMAGE, "wget", "-q", "-O", "/dev/null"])
        .arg("http://deb.debian.org/debian/dists/bookworm/Release")
        .output()
        .unwrap();
    let have_debian = Command::new("docker").args(["image", "inspect", "local/debian:bookworm"]).output().unwrap();
    if !probe.status.success() || !have_debian.status.success() {
        let why = "no network from containers to Debian's mirror, or no local/debian:bookworm (scripts/import-debian.sh)";
        assert!(std::env::var("ENGINE_REQUIRE_NETWORK").as_deref() != Ok("1"), "{why}");
        eprintln!("skipped: {why}");
        return;
    }
    let host = Host::new();
    let img = name("aptstage");
    let _built = Built(vec![img.clone()]);
    let p = Project::new(&format!(
        "version: 1\nname: {img}\nimages:\n  {img}:\n    stages:\n      - name: tools\n        from: local/debian:bookworm\n        network: bridge\n        run: echo {img} && apt-get update -qq && apt-get install -y -qq --no-install-recommends cowsay\nsteps:\n  use:\n    image: {img}\n    run: /usr/games/cowsay moo > moo.txt\n    outputs: [moo.txt]\n"
    ));
    let o = p.run(&["run"]);
    let out = out_err(&o);
    assert_eq!(code(&o), 0, "{out}");
    assert!(!out.contains("Operation not permitted"), "{out}");
    assert!(std::fs::read_to_string(p.path().join(".engine/out/use/moo.txt")).unwrap().contains("< moo >"));
    assert_nothing_escaped(&p, &host, &[]);
}
