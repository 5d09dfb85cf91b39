//! Workflows that load, and the resolved IR they give.
mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::load;
use dsl::{CacheMount, Command, ImageDef, ImageRef, Limits, Network, User};

#[test]
fn spec_example_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/spec.yml");
    let wf = match dsl::load_file(&path) {
        Ok(w) => w,
        Err(e) => panic!("{}", common::render(&e)),
    };
    assert_eq!(wf.name, "my-pipeline");
    assert_eq!(wf.steps.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["compile", "test", "scan"]);
    let compile = wf.step("compile").unwrap();
    assert_eq!(compile.image, ImageRef::Built("toolchain".into()));
    assert_eq!(compile.env.get("CC").map(String::as_str), Some("gcc"));
    assert_eq!(compile.env.get("LANG").map(String::as_str), Some("C.UTF-8"));
    let test = wf.step("test").unwrap();
    assert_eq!(test.image, ImageRef::Reference("local/busybox:1".into()));
    assert_eq!(test.limits.timeout, Duration::from_secs(30));
    assert_eq!(test.limits.memory, 1 << 30);
    let scan = wf.step("scan").unwrap();
    assert_eq!(scan.limits, Limits::sandbox());
    assert_eq!(scan.secrets, ["API_TOKEN"]);
    assert!(!scan.cache);
    assert!(test.cache);
    match &wf.images["toolchain"] {
        ImageDef::Stages(stages) => {
            assert_eq!(stages.len(), 2);
            assert_eq!(stages[0].network, Network::Bridge);
            assert_eq!(stages[1].copy[0].from.as_deref(), Some("build"));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        wf.images["legacy"],
        ImageDef::Dockerfile {
            dockerfile: "docker/Dockerfile".into(),
            context: ".".into(),
            network: Network::None,
            args: Default::default(),
            target: None,
        }
    );
    assert_eq!(wf.dir, path.parent().unwrap());
}

#[test]
fn name_defaults_to_file_stem_and_dir_to_dot() {
    let wf = load("ci.yml", "version: 1\nsteps:\n  a: { image: alpine, run: 'true' }\n");
    assert_eq!(wf.name, "ci");
    assert_eq!(wf.dir, PathBuf::from("."));
    let wf = load("some/dir/x.yaml", "version: 1\nsteps:\n  a: { image: alpine, run: 'true' }\n");
    assert_eq!(wf.dir, PathBuf::from("some/dir"));
}

#[test]
fn builtin_defaults() {
    let wf = load("w.yml", "version: 1\nsteps:\n  a:\n    image: alpine\n    command: [echo, hi there]\n");
    let a = &wf.steps[0];
    assert_eq!(a.limits, Limits::default());
    assert_eq!(a.isolation.network, Network::None);
    assert_eq!(a.isolation.user, User { uid: 1000, gid: 1000 });
    assert_eq!(a.workdir, "/workspace");
    assert!(a.cache);
    assert_eq!(a.command, Command::Argv(vec!["echo".into(), "hi there".into()]));
    assert_eq!(a.command.argv(), ["echo", "hi there"]);
    assert_eq!(a.image, ImageRef::Reference("alpine".into()));
}

#[test]
fn precedence_defaults_profile_step() {
    let text = r#"
version: 1
env: { A: wf, B: wf, N: 1 }
defaults:
  image: local/busybox:1
  network: bridge
  user: "2000"
  workdir: /src
  limits: { cpus: 4, memory: 2g, pids: 100 }
steps:
  plain:
    run: 'true'
  sandboxed:
    profile: sandbox
    run: 'true'
  own:
    profile: sandbox
    network: bridge
    user: "3000:4000"
    limits: { memory: 256m, timeout: 1m30s }
    env: { B: step, C: true }
    run: 'true'
  built:
    profile: build
    image: alpine:3
    run: 'true'
"#;
    let wf = load("p.yml", text);
    let plain = wf.step("plain").unwrap();
    assert_eq!(plain.limits.millicpus, 4000);
    assert_eq!(plain.limits.memory, 2 << 30);
    assert_eq!(plain.limits.pids, 100);
    assert_eq!(plain.limits.timeout, Duration::from_secs(600));
    assert_eq!(plain.isolation.network, Network::Bridge);
    assert_eq!(plain.isolation.user, User { uid: 2000, gid: 2000 });
    assert_eq!(plain.workdir, "/src");
    assert_eq!(plain.env.get("N").map(String::as_str), Some("1"));

    let sandboxed = wf.step("sandboxed").unwrap();
    assert_eq!(sandboxed.limits, Limits::sandbox());
    assert_eq!(sandboxed.isolation.network, Network::None);
    assert_eq!(sandboxed.profile.as_deref(), Some("sandbox"));

    let own = wf.step("own").unwrap();
    assert_eq!(own.limits, Limits { memory: 256 << 20, timeout: Duration::from_secs(90), ..Limits::sandbox() });
    assert_eq!(own.isolation.network, Network::Bridge);
    assert_eq!(own.isolation.user, User { uid: 3000, gid: 4000 });
    let env: Vec<(&str, &str)> = own.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(env, [("A", "wf"), ("B", "step"), ("C", "true"), ("N", "1")]);

    let built = wf.step("built").unwrap();
    assert_eq!(built.limits, Limits::default());
    assert_eq!(built.isolation.network, Network::None);
    assert_eq!(built.image, ImageRef::Reference("alpine:3".into()));
}

#[test]
fn policy_allows_what_is_within_it() {
    let policy = dsl::Policy::load_str(
        Path::new("policy.yml"),
        "version: 1\nmax_limits: { memory: 2g, cpus: 2, timeout: 1h }\nnetworks: [none, bridge]\nimage_prefixes: [\"local/\"]\nallow_root: true\n",
    )
    .unwrap_or_else(|e| panic!("{}", common::render(&e)));
    assert!(policy.allows_root());
    let wf = dsl::load_str_with(
        Path::new("w.yml"),
        "version: 1\nsteps:\n  a: { image: local/x, run: id, user: \"0\", limits: { memory: 2g } }\n",
        &policy,
        &dsl::FsLoader::for_workflow(Path::new("w.yml")),
    )
    .unwrap_or_else(|e| panic!("{}", common::render(&e)));
    assert_eq!(wf.steps[0].isolation.user, User { uid: 0, gid: 0 });
}

#[test]
fn no_panic_on_any_prefix_of_the_spec_example() {
    // Truncated files hit every parser error path; none may panic.
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/spec.yml")).unwrap();
    let text = format!("# ✓ non-ASCII\n{text}");
    for (i, _) in text.char_indices() {
        let _ = dsl::load_str(Path::new("w.yml"), &text[..i]);
    }
    for odd in [
        "",
        "[]",
        "x",
        "version: 1\nsteps: []",
        "version: 1\nsteps:\n",
        "version: 1\nsteps: {}\n",
        "version: 1\nsteps:\n  a:\n",
        "version: 1\nsteps:\n  a: 3\n",
        "&a x: *a",
    ] {
        assert!(dsl::load_str(Path::new("w.yml"), odd).is_err(), "{odd:?} should not load");
    }
}

#[test]
fn no_panic_on_odd_yaml() {
    for odd in ["a: 1\n---\nb: 2\n", "---\n...\n---\n", "a: !tag x", "? [a]\n: b", "a: 1\n...\n", "--- 1\n--- 2"] {
        assert!(dsl::load_str(Path::new("w.yml"), odd).is_err(), "{odd:?} should not load");
    }
}

#[test]
fn missing_policy_file_is_an_error_naming_it() {
    let err = dsl::Policy::load(Path::new("/nonexistent/policy.yml")).expect_err("no such file");
    assert!(common::render(&err).contains("cannot read policy file /nonexistent/policy.yml"));
}

#[test]
fn caches_load_in_normal_form() {
    let wf = load(
        "caches.yml",
        "version: 1\ndefaults: { image: alpine }\nsteps:\n  a:\n    run: x\n    caches:\n      - { name: cargo, path: /home/user/.cargo/registry/ }\n      - name: npm\n        path: /home/user/.npm\n  b:\n    run: x\n",
    );
    let a = wf.step("a").unwrap();
    assert_eq!(
        a.caches,
        [
            CacheMount { name: "cargo".into(), path: "/home/user/.cargo/registry".into() },
            CacheMount { name: "npm".into(), path: "/home/user/.npm".into() },
        ]
    );
    assert!(wf.step("b").unwrap().caches.is_empty());
}

#[test]
fn policy_remote_cache_is_a_url_or_a_mapping_with_its_lines() {
    let policy = dsl::Policy::load_str(Path::new("policy.yml"), "version: 1\nremote_cache: oci://127.0.0.1:5000/cache\n")
        .unwrap_or_else(|e| panic!("{}", common::render(&e)));
    let rc = policy.remote_cache().expect("a remote cache");
    assert_eq!(rc.url.as_ref().map(|u| (u.value.as_str(), u.at.as_str())), Some(("oci://127.0.0.1:5000/cache", "policy.yml:2")));
    assert!(rc.mode.is_none() && rc.insecure.is_none());

    let text = "remote_cache:\n  url: oci://r.example/c\n  mode: read\n  insecure: true\n";
    let rc = dsl::Policy::load_str(Path::new("p.yml"), text).unwrap_or_else(|e| panic!("{}", common::render(&e))).remote_cache().unwrap();
    assert_eq!(rc.mode.map(|m| (m.value, m.at)), Some(("read".to_string(), "p.yml:3".to_string())));
    assert_eq!(rc.insecure.map(|m| m.value), Some(true));
    assert!(dsl::Policy::default().remote_cache().is_none());

    for bad in ["remote_cache:\n  mode: all\n", "remote_cache:\n  urls: x\n", "remote_cache: [a]\n", "remote_cache:\n  insecure: maybe\n"] {
        assert!(dsl::Policy::load_str(Path::new("p.yml"), bad).is_err(), "{bad:?} should not load");
    }
}
