//! The image scripts under `scripts/`, run against stubs (no mirror, no daemon): what they ask of
//! the host (root or sudo) and what they give `docker import`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts").join(name)
}

fn stub(dir: &Path, name: &str, body: &str) {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A folder of stubs put first on PATH: `id -u` prints `uid`; `sudo` and `docker` write what
/// they were asked to `calls`; `debootstrap` makes a minimal root where it is told to.
fn stubs(uid: u32, with_sudo: bool) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let calls = dir.path().join("calls");
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    stub(&bin, "id", &format!("echo {uid}"));
    if with_sudo {
        stub(&bin, "sudo", &format!("echo \"sudo $*\" >> {}\n\"$@\"", calls.display()));
    }
    stub(
        &bin,
        "debootstrap",
        "root=\"$3\"; mkdir -p \"$root/etc\" \"$root/var/lib/apt/lists\" \"$root/var/cache/apt/archives\"\n\
         echo 'root:x:0:0:root:/root:/bin/bash' > \"$root/etc/passwd\"; echo 'root:x:0:' > \"$root/etc/group\"",
    );
    stub(&bin, "docker", &format!("cat > /dev/null; echo \"docker $*\" >> {}", calls.display()));
    (dir, calls)
}

fn run(script_name: &str, dir: &Path, args: &[&str]) -> Output {
    let path = format!("{}:/usr/bin:/bin", dir.join("bin").display());
    // `bash` by absolute path: the stubs' PATH has no other programs of ours.
    Command::new("/bin/bash").arg(script(script_name)).args(args).env("PATH", path).output().unwrap()
}

#[test]
fn import_debian_as_root_never_calls_sudo_and_keeps_the_standard_path() {
    let (dir, calls) = stubs(0, true);
    let o = run("import-debian.sh", dir.path(), &["bookworm", "local/test-debian:x"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let calls = std::fs::read_to_string(calls).unwrap();
    assert!(!calls.contains("sudo"), "{calls}");
    assert!(calls.contains("docker import --change ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"), "{calls}");
    assert!(calls.contains("local/test-debian:x"), "{calls}");
}

#[test]
fn import_debian_not_root_says_it_uses_sudo_or_stops_without_it() {
    let (dir, calls) = stubs(1000, true);
    let o = run("import-debian.sh", dir.path(), &["bookworm", "local/test-debian:x"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("with sudo"));
    assert!(std::fs::read_to_string(calls).unwrap().contains("sudo debootstrap --variant=minbase bookworm"));

    let (dir, calls) = stubs(1000, false);
    let o = run("import-debian.sh", dir.path(), &["bookworm", "local/test-debian:x"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("run this script as root"), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!calls.exists(), "nothing was run");
}

#[test]
fn import_busybox_gives_the_official_busybox_path() {
    let (dir, calls) = stubs(0, false);
    let o = run("import-busybox.sh", dir.path(), &["local/test-busybox:x"]);
    // (Needs a static busybox on the host, as the script itself does; CI's has Debian's.)
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let calls = std::fs::read_to_string(calls).unwrap();
    assert!(calls.contains("docker import --change ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"), "{calls}");
}
