use super::*;
use proptest::prelude::*;

fn d(byte: u8) -> Digest {
    Digest::from_bytes([byte; 32])
}

fn sample() -> KeyComponents {
    KeyComponents {
        format: 1,
        image: "built sha256:ab12cd34ef567890ab12cd34ef567890ab12cd34ef567890ab12cd34ef567890".parse().unwrap(),
        command: vec!["sh".into(), "-c".into(), "cc -o out/hello src/hello.c".into()],
        env: [("CC".to_string(), "gcc".to_string()), ("LANG".to_string(), "C".to_string())].into(),
        workdir: "/work".into(),
        user: "1000:1000".into(),
        network: "none".into(),
        outputs: vec!["out/".into()],
        secrets: vec!["TOKEN".into()],
        inputs: vec![
            InputEntry { path: "src/hello.c".into(), mode: 0o644, digest: d(1) },
            InputEntry { path: "src/run.sh".into(), mode: 0o755, digest: d(2) },
        ],
        upstream: vec![UpstreamEntry { step: "fetch".into(), outputs: d(3) }],
    }
}

/// Pinned: keys must be identical across processes, machines and engine builds, or every
/// cache entry silently stops matching. If this fails, the encoding changed: bump
/// `CACHE_FORMAT_VERSION` (old entries must not match new keys by accident) and update this
/// literal in the same commit. (Cross-checked against an independent implementation of the
/// layout documented on `encode`.)
#[test]
fn key_is_pinned() {
    assert_eq!(sample().key().to_string(), "8edd24a471354d335bc7582fa2af8d4f27dbaed75ebbab8f293c7ccb0a7c0d9b");
}

#[test]
fn encoding_starts_with_magic_and_format() {
    let enc = sample().encode();
    assert!(enc.starts_with(b"engine-action-key\0"));
    let rest = &enc[MAGIC.len()..];
    assert_eq!(rest[0], TAG_FORMAT);
    assert_eq!(&rest[1..9], &4u64.to_be_bytes());
    assert_eq!(&rest[9..13], &1u32.to_be_bytes());
}

#[test]
fn adversarial_shapes_differ() {
    let base = KeyComponents { env: BTreeMap::new(), command: vec![], inputs: vec![], upstream: vec![], ..sample() };
    let with = |f: &dyn Fn(&mut KeyComponents)| {
        let mut k = base.clone();
        f(&mut k);
        k
    };
    let pairs = [
        (
            with(&|k| k.env = [("A".into(), "1".into()), ("B".into(), "2".into())].into()),
            with(&|k| k.env = [("A".into(), "1B=2".into())].into()),
        ),
        (with(&|k| k.command = vec!["a b".into()]), with(&|k| k.command = vec!["a".into(), "b".into()])),
        (with(&|k| k.command = vec!["ab".into()]), with(&|k| k.command = vec!["a".into(), "b".into()])),
        (with(&|k| k.command = vec![String::new()]), with(&|k| k.command = vec![])),
        (with(&|k| k.env = [("A".into(), String::new())].into()), with(&|k| k.env = BTreeMap::new())),
        (with(&|k| k.env = [(String::new(), String::new())].into()), with(&|k| k.env = BTreeMap::new())),
        (with(&|k| k.outputs = vec![]), with(&|k| k.secrets = vec![])),
        (with(&|k| (k.outputs, k.secrets) = (vec!["x".into()], vec![])), with(&|k| (k.outputs, k.secrets) = (vec![], vec!["x".into()]))),
        (with(&|k| (k.workdir, k.user) = ("/a".into(), "b".into())), with(&|k| (k.workdir, k.user) = ("/ab".into(), String::new()))),
        (
            with(&|k| k.inputs = vec![InputEntry { path: "a".into(), mode: 0o644, digest: d(1) }]),
            with(&|k| k.inputs = vec![InputEntry { path: "a".into(), mode: 0o755, digest: d(1) }]),
        ),
    ];
    for (a, b) in &pairs {
        assert_ne!(a, b);
        assert_ne!(a.encode(), b.encode(), "{a:?} vs {b:?}");
        assert_ne!(a.key(), b.key());
    }
}

#[test]
fn unsorted_inputs_and_upstream_give_the_sorted_key() {
    let mut k = sample();
    k.inputs.reverse();
    k.upstream.push(UpstreamEntry { step: "a".into(), outputs: d(9) });
    let mut sorted = k.clone();
    sorted.upstream.sort_by(|a, b| a.step.cmp(&b.step));
    assert_eq!(k.key(), sample_with_upstream_a());
    assert_eq!(sorted.key(), sample_with_upstream_a());

    fn sample_with_upstream_a() -> ActionKey {
        let mut k = sample();
        k.upstream.insert(0, UpstreamEntry { step: "a".into(), outputs: d(9) });
        k.key()
    }
}

#[test]
fn diff_of_equal_components_is_empty() {
    assert_eq!(sample().diff(&sample()), vec![]);
}

#[test]
fn diff_lists_every_change_in_the_documented_order() {
    let old = sample();
    let mut new = sample();
    new.format = 2;
    new.image = ImageIdentity::Registry { digest: d(0xff) };
    new.command.push("-v".into());
    new.env.insert("CC".into(), "clang".into());
    new.env.remove("LANG");
    new.env.insert("X".into(), "1".into());
    new.workdir = "/b".into();
    new.user = "0:0".into();
    new.network = "bridge".into();
    new.outputs.push("more/".into());
    new.secrets.clear();
    new.inputs = vec![
        InputEntry { path: "src/a.c".into(), mode: 0o644, digest: d(7) },
        InputEntry { path: "src/hello.c".into(), mode: 0o644, digest: d(8) },
    ];
    new.upstream = vec![UpstreamEntry { step: "fetch".into(), outputs: d(4) }];
    let shown: Vec<String> = new.diff(&old).iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        [
            "cache format changed (1 -> 2)",
            "image changed (built sha256:ab12cd34ef56 -> registry sha256:ffffffffffff)",
            "command changed",
            "env `CC` changed (gcc -> clang)",
            "env `LANG` removed",
            "env `X` added (= 1)",
            "workdir changed (/work -> /b)",
            "user changed",
            "network changed (none -> bridge)",
            "outputs changed",
            "secrets changed",
            "input `src/a.c` added",
            "input `src/hello.c` changed",
            "input `src/run.sh` removed",
            "output of `fetch` changed",
        ]
    );
}

#[test]
fn diff_sees_mode_only_changes_and_upstream_added_or_removed() {
    let old = sample();
    let mut new = sample();
    new.inputs[1].mode = 0o644;
    new.upstream = vec![UpstreamEntry { step: "build".into(), outputs: d(5) }];
    assert_eq!(
        new.diff(&old),
        vec![
            Reason::InputChanged { path: "src/run.sh".into() },
            Reason::UpstreamChanged { step: "build".into() },
            Reason::UpstreamChanged { step: "fetch".into() },
        ]
    );
}

#[test]
fn display_of_the_reasons_without_a_diff() {
    let cases = [
        (Reason::NeverRun, "never run"),
        (Reason::CacheDisabled, "cache: false on the step"),
        (Reason::NoCacheFlag, "--no-cache"),
        (Reason::EntryMissing, "cache entry missing or damaged"),
        (Reason::UpstreamWillRun { step: "build".into() }, "needs `build`, which will run"),
        (
            Reason::ImageChanged {
                old: format!("sha256:0123456789ab{}", "c".repeat(52)).parse().unwrap(),
                new: ImageIdentity::Built { key: d(0xfe) },
            },
            "image changed (local sha256:0123456789ab -> built sha256:fefefefefefe)",
        ),
        (Reason::EnvChanged { name: "X".into(), old: None, new: None }, "env `X` changed"),
    ];
    for (reason, text) in cases {
        assert_eq!(reason.to_string(), text);
    }
}

/// Last-run records written before identities hold `image_id`, a bare image ID: they still
/// read, as a local image, and their image reason reads too.
#[test]
fn old_components_with_an_image_id_read_as_local() {
    let mut json = serde_json::to_value(sample()).unwrap();
    let object = json.as_object_mut().unwrap();
    let id = format!("sha256:{}", "cd".repeat(32));
    object.remove("image");
    object.insert("image_id".into(), serde_json::Value::String(id.clone()));
    let old: KeyComponents = serde_json::from_value(json).unwrap();
    assert_eq!(old.image, ImageIdentity::Local { id: id.parse().unwrap() });
    assert_eq!(sample().diff(&old)[0].to_string(), "image changed (local sha256:cdcdcdcdcdcd -> built sha256:ab12cd34ef56)");
    let reason: Reason = serde_json::from_str(&format!(r#"{{"kind":"image_changed","old":"{id}","new":"built {id}"}}"#)).unwrap();
    assert!(matches!(reason, Reason::ImageChanged { old: ImageIdentity::Local { .. }, new: ImageIdentity::Built { .. } }));
}

#[test]
fn reasons_round_trip_through_json() {
    let reason = Reason::EnvChanged { name: "CC".into(), old: Some("gcc".into()), new: None };
    let json = serde_json::to_string(&reason).unwrap();
    assert!(json.contains("\"kind\":\"env_changed\""), "{json}");
    assert_eq!(serde_json::from_str::<Reason>(&json).unwrap(), reason);
}

/// Strings from a tiny alphabet including separators people might use in a naive encoding,
/// so that generated pairs often look alike.
fn small_str() -> impl Strategy<Value = String> {
    "[ab= \\x00]{0,3}"
}

/// Every kind of identity over a few digests: the same digest under two kinds must differ.
fn identity() -> impl Strategy<Value = ImageIdentity> {
    (0u8..3, 0u8..3).prop_map(|(kind, byte)| match kind {
        0 => ImageIdentity::Built { key: d(byte) },
        1 => ImageIdentity::Registry { digest: d(byte) },
        _ => ImageIdentity::Local { id: crate::ImageId::from_digest(&d(byte)) },
    })
}

fn components() -> impl Strategy<Value = KeyComponents> {
    let digest = (0u8..3).prop_map(d);
    let mode = prop_oneof![Just(0o644u32), Just(0o755), Just(0o120777)];
    (
        (0u32..3, identity(), prop::collection::vec(small_str(), 0..4)),
        prop::collection::btree_map(small_str(), small_str(), 0..4),
        (small_str(), small_str(), small_str()),
        (prop::collection::vec(small_str(), 0..3), prop::collection::vec(small_str(), 0..3)),
        prop::collection::btree_map(small_str(), (mode, digest.clone()), 0..3),
        prop::collection::btree_map(small_str(), digest, 0..3),
    )
        .prop_map(|((format, image, command), env, (workdir, user, network), (outputs, secrets), inputs, upstream)| KeyComponents {
            format,
            image,
            command,
            env,
            workdir,
            user,
            network,
            outputs,
            secrets,
            inputs: inputs.into_iter().map(|(path, (mode, digest))| InputEntry { path, mode, digest }).collect(),
            upstream: upstream.into_iter().map(|(step, outputs)| UpstreamEntry { step, outputs }).collect(),
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn different_components_never_share_an_encoding(a in components(), b in components()) {
        prop_assert_eq!(a == b, a.encode() == b.encode());
    }

    /// Pairs that differ in one place only: the hardest case for an ambiguous encoding.
    #[test]
    fn one_change_changes_the_encoding(a in components(), b in components(), field in 0usize..11) {
        let mut c = a.clone();
        match field {
            0 => c.format = b.format,
            1 => c.image = b.image,
            2 => c.command = b.command,
            3 => c.env = b.env,
            4 => c.workdir = b.workdir,
            5 => c.user = b.user,
            6 => c.network = b.network,
            7 => c.outputs = b.outputs,
            8 => c.secrets = b.secrets,
            9 => c.inputs = b.inputs,
            _ => c.upstream = b.upstream,
        }
        prop_assert_eq!(a == c, a.encode() == c.encode());
        prop_assert_eq!(a == c, a.diff(&c).is_empty());
    }

    #[test]
    fn encoding_is_deterministic(a in components()) {
        prop_assert_eq!(a.encode(), a.clone().encode());
        prop_assert_eq!(a.key(), a.clone().key());
    }
}
