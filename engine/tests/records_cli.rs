//! `engine runs`, `engine runs show` and `engine provenance` end to end: real runs on the daemon
//! leave records that the three commands read back, and the provenance's subjects are the files
//! exported under `.engine/out`, with the digests `sha256sum` computes.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::*;

fn workflow() -> String {
    format!(
        r#"version: 1
name: records-demo
defaults: {{ image: {IMAGE} }}
steps:
  build:
    inputs: ["src.txt"]
    run: mkdir -p out && cp src.txt out/a.txt && echo built > out/b.txt && echo building
    outputs: ["out"]
  package:
    needs: [build]
    run: cat out/a.txt out/b.txt > pkg.txt && ln -s pkg.txt latest.txt
    outputs: ["pkg.txt", "latest.txt"]
"#
    )
}

fn ok(p: &Project, args: &[&str]) -> String {
    let o = p.run(args);
    assert_eq!(code(&o), 0, "engine {args:?}\nstdout:\n{}\nstderr:\n{}", text(&o.stdout), text(&o.stderr));
    text(&o.stdout)
}

/// The rows of `engine runs` (header and total line left out), split on whitespace.
fn rows(listing: &str) -> Vec<Vec<String>> {
    let lines: Vec<&str> = listing.lines().collect();
    assert!(lines.len() >= 3, "{listing}");
    assert_eq!(lines[0].split_whitespace().collect::<Vec<_>>(), ["id", "started", "workflow", "result", "run", "cached"]);
    lines[1..lines.len() - 1].iter().map(|l| l.split_whitespace().map(str::to_string).collect()).collect()
}

/// `sha256sum FILE`'s digest.
fn sha256sum(path: &Path) -> String {
    let o = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(o.status.success(), "sha256sum {}: {}", path.display(), text(&o.stderr));
    text(&o.stdout).split_whitespace().next().unwrap().to_string()
}

/// Every regular file under `dir`, by its `/`-separated path relative to `dir`.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                out.push(e.path().strip_prefix(dir).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn runs_are_listed_shown_and_attested() {
    let p = Project::new(&workflow());
    p.write("src.txt", "source\n");

    // First run: both steps execute.
    ok(&p, &["run"]);
    let listing = ok(&p, &["runs"]);
    let first = rows(&listing);
    assert_eq!(first.len(), 1, "{listing}");
    assert_eq!(first[0][2..], ["records-demo", "succeeded", "2", "0"], "{listing}");
    assert!(listing.trim_end().ends_with("1 run in ./.engine/runs"), "{listing}");
    let first_id = first[0][0].clone();

    let shown = ok(&p, &["runs", "show", "latest"]);
    for needle in [
        &format!("run                {first_id}\n"),
        "status             succeeded\n",
        "records-demo (workflow.yml, sha256:",
        "step build: succeeded (executed in ",
        "step package: succeeded (executed in ",
        &format!("  image              {IMAGE} (sha256:"),
        "  inputs             1 file\n",
        "  SOURCE_DATE_EPOCH  ",
        "out/a.txt  sha256:",
        "latest.txt  -> pkg.txt",
        &format!("/.engine/runs/{first_id}/logs/00-build.log  sha256:"),
    ] {
        assert!(shown.contains(needle), "no `{needle}` in:\n{shown}");
    }
    // The log named there is where it says.
    assert!(p.path().join(".engine/runs").join(&first_id).join("logs/00-build.log").is_file());

    // Second run: nothing changed, both steps come from the cache.
    ok(&p, &["run"]);
    let listing = ok(&p, &["runs"]);
    let both = rows(&listing);
    assert_eq!(both.len(), 2, "{listing}");
    assert_eq!(both[0][0], first_id, "oldest first:\n{listing}");
    assert_eq!(both[1][2..], ["records-demo", "succeeded", "0", "2"], "{listing}");
    assert!(listing.trim_end().ends_with("2 runs in ./.engine/runs"), "{listing}");
    let second_id = both[1][0].clone();
    let shown = ok(&p, &["runs", "show", &second_id]);
    assert!(shown.contains("step build: cached (outputs restored from the cache, no container ran)"), "{shown}");
    assert!(shown.contains("step package: cached ("), "{shown}");
    // A prefix that is not `latest` finds the first run.
    let shown = ok(&p, &["runs", "show", &first_id[..first_id.len() - 2]]);
    assert!(shown.contains(&format!("run                {first_id}\n")), "{shown}");

    // JSON: the listing's summaries and the record itself.
    let json: serde_json::Value = serde_json::from_str(&ok(&p, &["runs", "--output", "json"])).unwrap();
    assert_eq!(json[1]["id"], second_id.as_str());
    assert_eq!(json[1]["status"], "succeeded");
    assert_eq!(
        (json[1]["steps_run"].as_u64(), json[1]["steps_cached"].as_u64(), json[1]["steps_total"].as_u64()),
        (Some(0), Some(2), Some(2))
    );
    let shown: serde_json::Value = serde_json::from_str(&ok(&p, &["runs", "show", "latest", "--output", "json"])).unwrap();
    let on_disk: serde_json::Value =
        serde_json::from_slice(&std::fs::read(p.path().join(".engine/runs").join(&second_id).join("record.json")).unwrap()).unwrap();
    assert_eq!(shown, on_disk);

    // `--dir` reads another folder's records.
    let o = p.cmd(&["runs", "--dir"]).arg(p.path()).current_dir("/").output().unwrap();
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert_eq!(rows(&text(&o.stdout)).len(), 2);

    // Provenance of the cached run: every exported file is a subject, with sha256sum's digest.
    let statement: serde_json::Value = serde_json::from_str(&ok(&p, &["provenance", "latest"])).unwrap();
    assert_eq!(statement["_type"], "https://in-toto.io/Statement/v1");
    assert_eq!(statement["predicateType"], "https://slsa.dev/provenance/v1");
    let out = p.path().join(".engine/out");
    let subjects: BTreeMap<String, String> = statement["subject"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap().to_string(), s["digest"]["sha256"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(
        subjects.keys().cloned().collect::<Vec<_>>(),
        ["build/out/a.txt", "build/out/b.txt", "package/pkg.txt"],
        "symlinks and folders are not subjects"
    );
    assert_eq!(files_under(&out), subjects.keys().cloned().collect::<Vec<_>>(), "every exported file is a subject");
    for (name, digest) in &subjects {
        assert_eq!(digest, &sha256sum(&out.join(name)), "{name}");
    }
    let names: Vec<&str> = statement["subject"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert!(names.windows(2).all(|w| w[0] < w[1]), "sorted: {names:?}");

    let predicate = &statement["predicate"];
    assert_eq!(predicate["buildDefinition"]["buildType"], "tag:engine,2026:buildtypes/workflow-run/v1");
    let ext = &predicate["buildDefinition"]["externalParameters"];
    assert_eq!(ext["workflow"]["name"], "records-demo");
    assert_eq!(ext["workflow"]["digest"]["sha256"].as_str().unwrap(), sha256sum(&p.path().join("workflow.yml")));
    assert_eq!(ext["steps"][1]["needs"], serde_json::json!(["build"]));
    let deps = predicate["buildDefinition"]["resolvedDependencies"].as_array().unwrap();
    let image_id = text(&Command::new("docker").args(["image", "inspect", IMAGE, "--format", "{{.Id}}"]).output().unwrap().stdout);
    let image = deps.iter().find(|d| d["uri"] == format!("docker-image:{IMAGE}").as_str()).expect("the image");
    assert_eq!(format!("sha256:{}", image["digest"]["sha256"].as_str().unwrap()), image_id.trim());
    let src = deps.iter().find(|d| d["uri"] == "file:src.txt").expect("the input");
    assert_eq!(src["digest"]["sha256"].as_str().unwrap(), sha256sum(&p.path().join("src.txt")));
    let run_details = &predicate["runDetails"];
    assert_eq!(run_details["builder"]["id"], "tag:engine,2026:builder/engine");
    assert_eq!(run_details["metadata"]["invocationId"], second_id.as_str());
    let log = run_details["byproducts"].as_array().unwrap().iter().find(|b| b["name"] == "logs/00-build.log").expect("log");
    let log_path = p.path().join(".engine/runs").join(&second_id).join("logs/00-build.log");
    assert_eq!(log["digest"]["sha256"].as_str().unwrap(), sha256sum(&log_path));

    // An id that names no run: exit 2, the message names it.
    let o = p.run(&["runs", "show", "nosuchid"]);
    assert_eq!(code(&o), 2);
    assert!(text(&o.stderr).contains("`nosuchid`"), "{}", text(&o.stderr));
    let o = p.run(&["provenance", "nosuchid"]);
    assert_eq!(code(&o), 2);
    assert!(text(&o.stderr).contains("`nosuchid`"), "{}", text(&o.stderr));
}

#[test]
fn a_folder_without_runs_has_nothing_to_list_show_or_attest() {
    let p = Project::new(&workflow());
    for args in [&["runs"][..], &["runs", "--output", "json"], &["runs", "show", "latest"], &["provenance", "latest"]] {
        let o = p.run(args);
        assert_eq!(code(&o), 2, "engine {args:?}: {}", text(&o.stderr));
        let err = text(&o.stderr);
        assert!(err.contains("no run records in ./.engine/runs"), "engine {args:?}: {err}");
        assert!(o.stdout.is_empty(), "engine {args:?}");
    }
    let o = p.run(&["runs", "show", "nosuchid"]);
    assert_eq!(code(&o), 2);
    assert!(text(&o.stderr).contains("no run `nosuchid`"), "{}", text(&o.stderr));
}

#[test]
fn a_failed_run_is_listed_failed_and_attests_what_it_exported() {
    let p = Project::new(&format!(
        "version: 1\nname: half\ndefaults: {{ image: {IMAGE} }}\nsteps:\n  good: {{ run: echo ok > ok.txt, outputs: [ok.txt] }}\n  bad: {{ run: echo oops && exit 3 }}\n"
    ));
    let o = p.run(&["run", "--keep-going"]);
    assert_eq!(code(&o), 1, "{}", text(&o.stderr));
    let listing = ok(&p, &["runs"]);
    assert_eq!(rows(&listing)[0][2..], ["half", "failed", "2", "0"], "{listing}");
    let shown = ok(&p, &["runs", "show", "latest"]);
    assert!(shown.contains("status             failed\n"), "{shown}");
    assert!(shown.contains("step bad: failed (executed in ") && shown.contains("  exit code          3\n"), "{shown}");
    assert!(shown.contains("  reason             exited with code 3\n"), "{shown}");

    let statement: serde_json::Value = serde_json::from_str(&ok(&p, &["provenance", "latest"])).unwrap();
    assert_eq!(statement["subject"].as_array().unwrap().len(), 1, "{statement}");
    assert_eq!(statement["subject"][0]["name"], "good/ok.txt");
    assert_eq!(statement["subject"][0]["digest"]["sha256"].as_str().unwrap(), sha256sum(&p.path().join(".engine/out/good/ok.txt")));
    let logs: Vec<&str> = statement["predicate"]["runDetails"]["byproducts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|b| b["name"].as_str().filter(|n| n.starts_with("logs/")))
        .collect();
    assert_eq!(logs.len(), 2, "the failed step's log is a byproduct too: {logs:?}");
}

/// docs/records.md, "Signing with OpenSSH", as written there (without a passphrase; the check of
/// the files with jq and sha256sum is `runs_are_listed_shown_and_attested`'s, without jq).
#[test]
fn a_statement_signed_with_ssh_keygen_verifies_and_a_changed_one_does_not() {
    let p = Project::new(&workflow());
    p.write("src.txt", "source\n");
    ok(&p, &["run"]);
    let sh = |script: &str| {
        let o = Command::new("sh").arg("-c").arg(script).current_dir(p.path()).output().unwrap();
        (code(&o), text(&o.stdout), text(&o.stderr))
    };
    if sh("command -v ssh-keygen").0 != 0 {
        // OpenSSH's client is not part of what the engine needs; the docs' commands are checked
        // wherever it is installed.
        eprintln!("skipped: no ssh-keygen on this machine (Debian: apt-get install openssh-client)");
        return;
    }
    let engine = env!("CARGO_BIN_EXE_engine");
    let (c, _, err) = sh(&format!(
        r#"set -e
ssh-keygen -q -t ed25519 -f release-key -C "release signing key" -N ''
ENGINE_CACHE_DIR=.engine/test-cache {engine} provenance latest > provenance.json
ssh-keygen -Y sign -f release-key -n in-toto provenance.json
echo "release@example.com $(cat release-key.pub)" > allowed_signers"#
    ));
    assert_eq!(c, 0, "{err}");
    let verify = "ssh-keygen -Y verify -f allowed_signers -I release@example.com -n in-toto -s provenance.json.sig";
    let (c, out, err) = sh(&format!("{verify} < provenance.json"));
    assert_eq!(c, 0, "{out}{err}");
    assert!(out.contains(r#"Good "in-toto" signature for release@example.com"#), "{out}{err}");

    let (c, _, _) = sh(&format!("sed 's/\"jobs\": [0-9]*/\"jobs\": 99/' provenance.json > changed.json && {verify} < changed.json"));
    assert_ne!(c, 0, "a changed statement must not verify");
    let (c, _, _) = sh(&format!("{} < provenance.json", verify.replace("-n in-toto", "-n file")));
    assert_ne!(c, 0, "another namespace must not verify");
}

/// A run folder for a run that started `days_ago`, with a copy of `record` renamed to it.
fn fake_run(p: &Project, record: &serde_json::Value, days_ago: u64, n: u32) -> String {
    let started = std::time::SystemTime::now() - std::time::Duration::from_secs(days_ago * 24 * 3600);
    let id = format!("{:x}{n:06x}", started.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs());
    let dir = p.path().join(".engine/runs").join(&id);
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    let mut r = record.clone();
    r["run_id"] = serde_json::json!(id);
    std::fs::write(dir.join("record.json"), serde_json::to_vec(&r).unwrap()).unwrap();
    id
}

fn run_ids(p: &Project) -> Vec<String> {
    let mut ids: Vec<String> =
        std::fs::read_dir(p.path().join(".engine/runs")).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    ids.sort();
    ids
}

/// Records are pruned after every run (the newest 100 kept, none older than 30 days; never the
/// run itself, never a live engine's) and by `engine runs prune`, which says what it removed.
#[test]
fn old_records_are_pruned_by_count_and_age_but_never_the_current_or_a_live_run() {
    let p = Project::new(&format!("version: 1\nsteps:\n  a: {{ image: {IMAGE}, run: echo hi > a.txt, outputs: [a.txt] }}\n"));
    ok(&p, &["run"]);
    let first = run_ids(&p).pop().unwrap();
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(p.path().join(".engine/runs").join(&first).join("record.json")).unwrap()).unwrap();
    // 100 older runs (one of them 40 days old, one 50 days old and held by a live engine's lock),
    // and a folder that is no run.
    let mut fakes: Vec<String> = (1..=98).map(|n| fake_run(&p, &record, 1, n)).collect();
    let too_old = fake_run(&p, &record, 40, 99);
    let live = fake_run(&p, &record, 50, 100);
    fakes.extend([too_old.clone(), live.clone()]);
    std::fs::create_dir_all(p.path().join(".engine/runs/notes")).unwrap();
    let lock = std::fs::File::open(p.path().join(".engine/runs").join(&live)).unwrap();
    assert_eq!(unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX | libc::LOCK_NB) }, 0);

    // The next run keeps the newest 100 (itself included) and drops the 40-day-old one, but not
    // the live one.
    ok(&p, &["run"]);
    let ids = run_ids(&p);
    let current = ids.iter().filter(|i| !fakes.contains(i) && **i != first && *i != "notes").cloned().collect::<Vec<_>>();
    assert_eq!(current.len(), 1, "{current:?}");
    assert!(ids.contains(&first), "the first run is among the newest 100");
    assert!(!ids.contains(&too_old), "older than 30 days");
    assert!(ids.contains(&live), "its engine is still running");
    assert!(ids.contains(&"notes".to_string()), "not a run folder");
    assert_eq!(ids.len(), 101 + 1, "100 newest, the live one, and notes: {}", ids.len());

    // `engine runs prune` with limits: what it removed, one line each, and a total.
    let out = ok(&p, &["runs", "prune", "--keep", "2"]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines.iter().any(|l| *l == format!("kept {live}: its engine is still running")), "{out}");
    assert!(
        lines.iter().any(|l| l.starts_with(&format!("removed {}  started ", fakes[0])) && l.ends_with("  beyond the newest 2")),
        "{out}"
    );
    assert_eq!(lines.iter().filter(|l| l.starts_with("removed ") && l.contains("  started ")).count(), 98, "{out}");
    assert_eq!(*lines.last().unwrap(), "removed 98 runs, kept 3 in ./.engine/runs");
    assert_eq!(run_ids(&p), {
        let mut left = vec![first.clone(), current[0].clone(), live.clone(), "notes".to_string()];
        left.sort();
        left
    });
    // By age, in another folder (`-C`), as JSON; with the lock gone the old run goes too.
    drop(lock);
    let o = p.cmd(&["runs", "prune", "--older-than", "20days", "--output", "json", "-C"]).arg(p.path()).current_dir("/").output().unwrap();
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(json["removed"][0]["id"], live.as_str());
    assert_eq!(json["removed"][0]["reason"], "older than 20days");
    assert_eq!(json["kept"], 2);
    let o = p.run(&["runs", "prune", "--older-than", "soon"]);
    assert_eq!(code(&o), 2, "{}", text(&o.stderr));
}

/// Provenance names an engine-built image by its ID with the images it was built from, lists
/// every imported module (of the workflow's folder and of the library) with its digest, and
/// describes only steps that exported files.
#[test]
fn provenance_names_built_images_with_their_bases_and_every_imported_module() {
    let wf = unique("prov").to_lowercase();
    let p = Project::new(&format!(
        r#"version: 1
name: {wf}
images:
  {wf}-tool:
    stages:
      - {{ name: s, from: {IMAGE}, run: ["echo tool-{wf} > /tool.txt"] }}
defaults: {{ image: {IMAGE} }}
steps:
  made:
    image: {wf}-tool
    run: cat /tool.txt > made.txt
    outputs: [made.txt]
  check:
    run: 'true'
  greet:
    uses: lib/common.wf#greet
    with: {{ who: world }}
  sandboxed:
    uses: stdlib/sandbox.wf#run
    with: {{ command: "echo hi" }}
"#
    ));
    p.write("lib/common.wf", "template greet(who) {\n  run \"echo hello ${who} > greeting.txt\"\n  outputs \"greeting.txt\"\n}\n");
    let o = p.run(&["run"]);
    let cleanup = |wf: &str| {
        let o = Command::new("docker").args(["images", "-q", "--filter", &format!("label=engine.image={wf}-tool")]).output().unwrap();
        for id in text(&o.stdout).lines() {
            let _ = Command::new("docker").args(["rmi", "-f", id]).output();
        }
    };
    if code(&o) != 0 {
        cleanup(&wf);
        panic!("{}", text(&o.stderr));
    }
    let statement: serde_json::Value = serde_json::from_str(&ok(&p, &["provenance", "latest"])).unwrap();
    let (_, record) = latest_record(&p);
    cleanup(&wf);

    let ext = &statement["predicate"]["buildDefinition"]["externalParameters"];
    let described: Vec<&str> = ext["steps"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(described, ["made", "greet", "sandboxed"], "`check` exported no file");
    let started = engine::record::run_started_secs(record["run_id"].as_str().unwrap());
    for s in ext["steps"].as_array().unwrap() {
        assert!(s["source_date_epoch"].as_u64().unwrap() <= started, "{s}");
    }

    let deps = statement["predicate"]["buildDefinition"]["resolvedDependencies"].as_array().unwrap();
    let by_uri = |uri: &str| deps.iter().find(|d| d["uri"] == uri).unwrap_or_else(|| panic!("no {uri} in {deps:#?}"));
    let busybox = text(&Command::new("docker").args(["image", "inspect", IMAGE, "--format", "{{.Id}}"]).output().unwrap().stdout);
    let busybox = busybox.trim();
    let made = record["steps"].as_array().unwrap().iter().find(|s| s["name"] == "made").unwrap();
    let tool_id = made["image"]["id"].as_str().unwrap();
    assert_eq!(made["image"]["bases"], serde_json::json!([{ "reference": IMAGE, "id": busybox }]));
    let tool = by_uri(&format!("docker-image:images.{wf}-tool@{tool_id}"));
    assert_eq!(tool["name"], format!("images.{wf}-tool"));
    assert_eq!(tool["annotations"]["bases"], serde_json::json!([{ "reference": IMAGE, "id": busybox }]));
    assert_eq!(format!("sha256:{}", by_uri(&format!("docker-image:{IMAGE}"))["digest"]["sha256"].as_str().unwrap()), busybox);

    let module = by_uri("file:lib/common.wf");
    assert_eq!(module["digest"]["sha256"].as_str().unwrap(), sha256sum(&p.path().join("lib/common.wf")));
    let library = by_uri("tag:engine,2026:stdlib/sandbox.wf");
    let stdlib = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../stdlib-workflows/sandbox.wf");
    assert_eq!(library["digest"]["sha256"].as_str().unwrap(), sha256sum(&stdlib));
    assert_eq!(record["workflow"]["modules"].as_array().unwrap().len(), 2, "{}", record["workflow"]);
}
