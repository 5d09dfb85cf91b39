//! A Dockerfile image's key: what the build reads, and nothing else. The Dockerfile, the build
//! arguments, the target, the network, the IDs of the images its stages start from or copy
//! from, and the context entries its `COPY`/`ADD` sources match (path, kind, mode, content):
//! editing a README that no `COPY` names keeps the key, and so the image (its ID included: the
//! key is the only label the engine adds). Mtimes and owners are not in the key (a checkout
//! does not rebuild); they are sent as they are, as `docker build` sends them.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use globset::GlobBuilder;
use sha2::{Digest as _, Sha256};

use super::context::{Entry, Kind};
use super::parse::Sources;

/// Bumped when the key's encoding changes (old images then simply stop matching).
/// 2: bases' IDs, build arguments, target and network; only the entries the build reads.
const DOCKERFILE_KEY_VERSION: u32 = 2;

/// Everything a Dockerfile image's key covers.
pub(crate) struct KeyInput<'a> {
    pub dockerfile: &'a [u8],
    pub args: &'a BTreeMap<String, String>,
    pub target: Option<&'a str>,
    pub network: &'a str,
    /// Each base reference with its identity now: its registry digest, else its ID.
    pub bases: &'a [(String, String)],
    pub entries: &'a [Entry],
    /// The context folder.
    pub root: &'a Path,
    pub sources: &'a Sources,
}

/// The indices of the entries the build reads: those the sources match, with everything below
/// a matched folder. `None`: the whole context (a source through a symlink, a `.`, a pattern
/// too unusual to follow).
pub(crate) fn selected(entries: &[Entry], sources: &Sources) -> Option<Vec<usize>> {
    let Sources::Paths(paths) = sources else { return None };
    let index: std::collections::HashMap<&[u8], usize> = entries.iter().enumerate().map(|(i, e)| (e.rel.as_slice(), i)).collect();
    let mut chosen = vec![false; entries.len()];
    let select_under = |chosen: &mut Vec<bool>, root: &[u8]| {
        for (i, e) in entries.iter().enumerate() {
            if e.rel == root || (e.rel.starts_with(root) && e.rel.get(root.len()) == Some(&b'/')) {
                chosen[i] = true;
            }
        }
    };
    for src in paths {
        let special = |c: char| matches!(c, '*' | '?' | '[' | '\\');
        // The literal folders before the first special character: none may be a symlink.
        let literal: Vec<&str> = src.split('/').take_while(|c| !c.contains(special)).collect();
        let whole = literal.len() == src.split('/').count();
        let mut prefix = String::new();
        for (n, component) in literal.iter().enumerate() {
            if n > 0 {
                prefix.push('/');
            }
            prefix.push_str(component);
            if index.get(prefix.as_bytes()).is_some_and(|&i| matches!(entries[i].kind, Kind::Symlink(_))) {
                return None;
            }
        }
        if whole {
            select_under(&mut chosen, src.as_bytes());
        } else if src.contains(['[', '\\']) {
            // Classes and escapes: everything below the literal folders (wider, never narrower).
            if literal.is_empty() {
                return None;
            }
            select_under(&mut chosen, literal.join("/").as_bytes());
        } else {
            // `*` and `?` within a path component, as the builder's `filepath.Match` (a `**`
            // matches across folders here: wider, never narrower).
            let glob = GlobBuilder::new(src).literal_separator(true).build().ok()?.compile_matcher();
            let matched: Vec<usize> = entries
                .iter()
                .enumerate()
                .filter(|(_, e)| glob.is_match(Path::new(std::ffi::OsStr::from_bytes(&e.rel))))
                .map(|(i, _)| i)
                .collect();
            for i in matched {
                if matches!(entries[i].kind, Kind::Symlink(_)) {
                    return None;
                }
                select_under(&mut chosen, &entries[i].rel);
            }
        }
    }
    Some(chosen.iter().enumerate().filter(|(_, c)| **c).map(|(i, _)| i).collect())
}

/// The key, hashing the content of the entries read. Files are read without following a
/// symlink, as regular files only.
/// The SHA-256 of each file the key read, by entry index, for the sending to check.
pub(crate) type FileDigests = Vec<(usize, [u8; 32])>;

/// Also returns the digest of each file read.
pub(crate) fn key(input: &KeyInput<'_>) -> std::io::Result<(crate::key::StageKey, FileDigests)> {
    fn bytes(h: &mut Sha256, b: &[u8]) {
        h.update((b.len() as u64).to_le_bytes());
        h.update(b);
    }
    let mut h = Sha256::new();
    bytes(&mut h, b"engine-dockerfile-image");
    h.update(DOCKERFILE_KEY_VERSION.to_le_bytes());
    bytes(&mut h, input.dockerfile);
    bytes(&mut h, input.target.unwrap_or("").as_bytes());
    h.update([u8::from(input.target.is_some())]);
    bytes(&mut h, input.network.as_bytes());
    h.update((input.args.len() as u64).to_le_bytes());
    for (k, v) in input.args {
        bytes(&mut h, k.as_bytes());
        bytes(&mut h, v.as_bytes());
    }
    h.update((input.bases.len() as u64).to_le_bytes());
    for (reference, id) in input.bases {
        bytes(&mut h, reference.as_bytes());
        bytes(&mut h, id.as_bytes());
    }
    let chosen: Vec<usize> = match selected(input.entries, input.sources) {
        Some(list) => {
            h.update([b'P']);
            list
        }
        None => {
            h.update([b'A']);
            (0..input.entries.len()).collect()
        }
    };
    h.update((chosen.len() as u64).to_le_bytes());
    let mut digests = Vec::new();
    for i in chosen {
        let e = &input.entries[i];
        bytes(&mut h, &e.rel);
        h.update(e.mode.to_le_bytes());
        match &e.kind {
            Kind::File => {
                h.update([b'f']);
                let digest = content_digest(input.root, e)?;
                h.update(digest);
                digests.push((i, digest));
            }
            Kind::HardLink(first) => {
                h.update([b'h']);
                bytes(&mut h, first);
                h.update(content_digest(input.root, e)?);
            }
            Kind::Dir => h.update([b'd']),
            Kind::Symlink(target) => {
                h.update([b'l']);
                bytes(&mut h, target.as_os_str().as_encoded_bytes());
            }
        }
    }
    Ok((crate::key::StageKey::from_digest(cache::Digest::from_bytes(h.finalize().into())), digests))
}

/// SHA-256 of a regular file's content, opened without following a symlink below the context.
fn content_digest(root: &Path, e: &Entry) -> std::io::Result<[u8; 32]> {
    let mut f = super::context::open_entry(root, e)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(list: &[(&str, char)]) -> Vec<Entry> {
        list.iter()
            .map(|(rel, kind)| Entry {
                rel: rel.as_bytes().to_vec(),
                path: Path::new("/nonexistent").join(rel),
                kind: match kind {
                    'd' => Kind::Dir,
                    'l' => Kind::Symlink("elsewhere".into()),
                    _ => Kind::File,
                },
                mode: 0o644,
                mtime: 0,
                digest: None,
            })
            .collect()
    }

    fn chosen(list: &[(&str, char)], sources: &[&str]) -> Option<Vec<String>> {
        let e = entries(list);
        let s = Sources::Paths(sources.iter().map(|s| s.to_string()).collect());
        selected(&e, &s).map(|v| v.into_iter().map(|i| String::from_utf8_lossy(&e[i].rel).into_owned()).collect())
    }

    const TREE: &[(&str, char)] = &[
        ("README.md", 'f'),
        ("a.cfg", 'f'),
        ("app", 'd'),
        ("app/main.txt", 'f'),
        ("app/sub", 'd'),
        ("app/sub/x", 'f'),
        ("apple", 'f'),
        ("link", 'l'),
        ("src", 'd'),
        ("src/m.py", 'f'),
        ("src/n.rs", 'f'),
    ];

    #[test]
    fn sources_select_what_they_match_and_everything_below() {
        assert_eq!(chosen(TREE, &["app"]).unwrap(), ["app", "app/main.txt", "app/sub", "app/sub/x"]);
        assert_eq!(chosen(TREE, &["*.cfg", "src/*.py"]).unwrap(), ["a.cfg", "src/m.py"]);
        assert_eq!(chosen(TREE, &["ap?le"]).unwrap(), ["apple"]);
        assert_eq!(chosen(TREE, &["missing"]).unwrap(), Vec::<String>::new());
        // A class: everything below the literal folders.
        assert_eq!(chosen(TREE, &["src/[m].py"]).unwrap(), ["src", "src/m.py", "src/n.rs"]);
    }

    #[test]
    fn symlinks_and_unusual_patterns_take_the_whole_context() {
        assert_eq!(chosen(TREE, &["link"]), None);
        assert_eq!(chosen(TREE, &["link/x"]), None);
        assert_eq!(chosen(TREE, &["l*"]), None);
        assert_eq!(chosen(TREE, &["[a]pp"]), None);
        let e = entries(TREE);
        assert_eq!(selected(&e, &Sources::All), None);
    }
}
