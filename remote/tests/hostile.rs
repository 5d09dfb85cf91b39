//! Registry answers that are not entries of ours: a config naming another key, a layer whose
//! size disagrees, an unsafe output path, a wrong media type, an oversized manifest. Each is
//! `Damaged` (or `Invalid`) and nothing is stored. Crafted manifests are put with plain HTTP.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use cache::Digest;
use common::*;
use remote::format::{self, ImageManifest};
use remote::testing::TestRegistry;
use remote::{action_tag, Fetched, Remote};

fn base(reg: &TestRegistry) -> String {
    format!("http://{}/v2/{}", reg.registry(), remote::testing::DEFAULT_REPO)
}

async fn get_manifest(reg: &TestRegistry, tag: &str) -> ImageManifest {
    let body = reqwest::Client::new()
        .get(format!("{}/manifests/{tag}", base(reg)))
        .header("accept", format::MANIFEST_MEDIA_TYPE)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    serde_json::from_slice(&body).unwrap()
}

async fn put_manifest(reg: &TestRegistry, tag: &str, m: &ImageManifest) {
    let res = reqwest::Client::new()
        .put(format!("{}/manifests/{tag}", base(reg)))
        .header("content-type", format::MANIFEST_MEDIA_TYPE)
        .body(serde_json::to_vec(m).unwrap())
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}: {}", res.status(), res.text().await.unwrap());
}

async fn put_blob(reg: &TestRegistry, bytes: &[u8]) -> Digest {
    let digest = Digest::of(bytes);
    let client = reqwest::Client::new();
    let res = client.post(format!("{}/blobs/uploads/", base(reg))).send().await.unwrap();
    let location = res.headers()["location"].to_str().unwrap().to_string();
    let sep = if location.contains('?') { '&' } else { '?' };
    let url = if location.starts_with("http") { location.clone() } else { format!("http://{}{location}", reg.registry()) };
    let res = client.put(format!("{url}{sep}digest={}", digest.prefixed())).body(bytes.to_vec()).send().await.unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    digest
}

/// `real` with its config replaced by `entry` (uploaded as a blob).
async fn with_config(reg: &TestRegistry, real: &ImageManifest, entry: &cache::Manifest) -> ImageManifest {
    let config = serde_json::to_vec(entry).unwrap();
    let mut crafted = real.clone();
    crafted.config.digest = put_blob(reg, &config).await.prefixed();
    crafted.config.size = config.len() as u64;
    // Embedded too, as a writer of ours does: the checks below go through the inline path.
    crafted.config.data = Some(b64(&config));
    crafted
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Push a real entry, then serve a variation of its OCI manifest under the tag of `target`.
#[tokio::test]
async fn entries_that_are_not_ours_are_damaged_and_never_stored() {
    let Some(reg) = TestRegistry::start() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let a = store(&tmp.path().join("a"));
    let b = store(&tmp.path().join("b"));
    let m = put(&a, "real", &[("f", b"content of f")], b"log");
    let r = remote(reg.url(), tmp.path());
    r.push_action(&a, &m).await.unwrap();
    let real = get_manifest(&reg, &action_tag(&m.key)).await;

    // The config of another key, under this key's tag.
    let other = key("other");
    put_manifest(&reg, &action_tag(&other), &real).await;
    let Fetched::Damaged(why) = r.fetch_action(&b, &other).await.unwrap() else { panic!("damaged") };
    assert!(why.contains("not"), "{why}");
    assert!(b.get(&other).is_none());

    // A layer whose size disagrees with the entry.
    let k = key("size");
    let mut entry = without_inputs(&m);
    entry.key = k;
    let mut crafted = with_config(&reg, &real, &entry).await;
    let f = Digest::of(b"content of f");
    let extra = put_blob(&reg, b"content of f, longer").await;
    for l in crafted.layers.iter_mut().filter(|l| l.digest == f.prefixed()) {
        l.digest = extra.prefixed();
        l.size = 20;
    }
    put_manifest(&reg, &action_tag(&k), &crafted).await;
    let Fetched::Damaged(why) = r.fetch_action(&b, &k).await.unwrap() else { panic!("damaged") };
    assert!(why.contains("not among the layers"), "{why}");

    // The entry's size of a file disagrees with its layer.
    let k = key("size2");
    let mut entry = without_inputs(&m);
    entry.key = k;
    for e in entry.entries.iter_mut() {
        if let cache::OutputEntry::File { size, .. } = e {
            *size += 1;
        }
    }
    let crafted = with_config(&reg, &real, &entry).await;
    put_manifest(&reg, &action_tag(&k), &crafted).await;
    let Fetched::Damaged(why) = r.fetch_action(&b, &k).await.unwrap() else { panic!("damaged") };
    assert!(why.contains("bytes"), "{why}");
    assert!(b.get(&k).is_none());

    // An output path outside the destination.
    let k = key("unsafe");
    let mut entry = without_inputs(&m);
    entry.key = k;
    if let cache::OutputEntry::File { path, .. } = &mut entry.entries[0] {
        *path = "../escape".into();
    }
    let crafted = with_config(&reg, &real, &entry).await;
    put_manifest(&reg, &action_tag(&k), &crafted).await;
    let Fetched::Damaged(why) = r.fetch_action(&b, &k).await.unwrap() else { panic!("damaged") };
    assert!(why.contains("unsafe"), "{why}");
    assert!(!b.manifest_path(&k).exists());

    // Not our config media type.
    let k = key("media");
    let mut crafted = real.clone();
    crafted.config.media_type = "application/vnd.oci.image.config.v1+json".into();
    put_manifest(&reg, &action_tag(&k), &crafted).await;
    let Fetched::Damaged(why) = r.fetch_action(&b, &k).await.unwrap() else { panic!("damaged") };
    assert!(why.contains("media type"), "{why}");

    // A config descriptor smaller than the config: never read past it.
    let k = key("short");
    let mut entry = without_inputs(&m);
    entry.key = k;
    let mut crafted = with_config(&reg, &real, &entry).await;
    crafted.config.size = 10;
    put_manifest(&reg, &action_tag(&k), &crafted).await;
    let Fetched::Damaged(_) = r.fetch_action(&b, &k).await.unwrap() else { panic!("damaged") };
    assert!(b.get(&k).is_none());
}

/// Embedded content (OCI 1.1 `data`) that disagrees with its descriptor is damage, never used.
#[tokio::test]
async fn embedded_content_that_does_not_match_its_descriptor_is_damaged() {
    let Some(reg) = TestRegistry::start() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let a = store(&tmp.path().join("a"));
    let m = put(&a, "real", &[("f", b"content of f")], b"log");
    let r = remote(reg.url(), tmp.path());
    r.push_action(&a, &m).await.unwrap();
    let real = get_manifest(&reg, &action_tag(&m.key)).await;
    let f = Digest::of(b"content of f").prefixed();
    assert_eq!(real.layers.iter().find(|l| l.digest == f).unwrap().data, Some(b64(b"content of f")), "small blobs are embedded");
    assert!(real.config.data.is_some(), "a small config is embedded");
    // The real entry is one request: the manifest.
    let b = store(&tmp.path().join("b"));
    let Fetched::Hit { transfer, .. } = r.fetch_action(&b, &m.key).await.unwrap() else { panic!("a hit") };
    assert_eq!(transfer.blobs, 0, "{transfer:?}");
    assert_eq!(b.read_blob(&Digest::of(b"content of f")).unwrap(), b"content of f");

    // Each variation is served under the tag of a key whose entry is otherwise the real one.
    type Change = fn(&mut ImageManifest, &str);
    let cases: [(&str, Change); 5] = [
        // Same length, other bytes.
        ("tampered", |m, f| m.layers.iter_mut().filter(|l| l.digest == f).for_each(|l| l.data = Some(b64(b"CONTENT OF F")))),
        ("not base64", |m, f| m.layers.iter_mut().filter(|l| l.digest == f).for_each(|l| l.data = Some("!!!!!!!!!!!!!!!!".into()))),
        // Longer than the size needs: refused before decoding.
        ("overlong", |m, f| m.layers.iter_mut().filter(|l| l.digest == f).for_each(|l| l.data = Some("A".repeat(1 << 20)))),
        ("short", |m, f| m.layers.iter_mut().filter(|l| l.digest == f).for_each(|l| l.data = Some(b64(b"content")))),
        ("config", |m, _| m.config.data = Some(b64(&vec![b' '; m.config.size as usize]))),
    ];
    for (name, change) in cases {
        let k = key(name);
        let mut entry = without_inputs(&m);
        entry.key = k;
        let mut crafted = with_config(&reg, &real, &entry).await;
        change(&mut crafted, &f);
        put_manifest(&reg, &action_tag(&k), &crafted).await;
        let b = store(&tmp.path().join(name));
        let Fetched::Damaged(why) = r.fetch_action(&b, &k).await.unwrap() else { panic!("{name}: damaged") };
        assert!(why.contains("inline data"), "{name}: {why}");
        assert!(b.get(&k).is_none(), "{name}");
        assert!(!b.has_blob(&Digest::of(b"content of f")), "{name}");
    }
}

/// A fake registry answering every request with `answer` (raw HTTP), on a free port.
fn fake_registry(answer: Vec<u8>) -> String {
    fake_registry_holding(answer, Duration::ZERO)
}

/// [`fake_registry`], keeping each connection open `hold` after the answer.
fn fake_registry_holding(answer: Vec<u8>, hold: Duration) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            let answer = answer.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let _ = s.write_all(&answer);
                std::thread::sleep(hold);
            });
        }
    });
    format!("oci://{addr}/engine/cache")
}

#[tokio::test]
async fn an_oversized_or_endless_manifest_is_refused_without_reading_it_all() {
    let tmp = tempfile::tempdir().unwrap();
    let b = store(&tmp.path().join("b"));
    // A Content-Length beyond the bound.
    let url = fake_registry(b"HTTP/1.1 200 OK\r\nContent-Length: 104857600\r\nContent-Type: application/json\r\n\r\n{".to_vec());
    let r = remote(url.parse().unwrap(), tmp.path());
    let Fetched::Damaged(why) = r.fetch_action(&b, &key("k")).await.unwrap() else { panic!("damaged") };
    assert!(why.contains("larger than"), "{why}");
    // No length: a body larger than the bound (5 MiB of spaces, then the connection closes).
    let mut answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n".to_vec();
    answer.extend(std::iter::repeat_n(b' ', 5 << 20));
    let url = fake_registry(answer);
    let r = remote(url.parse().unwrap(), tmp.path());
    let Fetched::Damaged(why) = r.fetch_action(&b, &key("k")).await.unwrap() else { panic!("damaged") };
    assert!(why.contains("larger than"), "{why}");
    // A 503 is unavailable, a 200 with garbage is damaged.
    let url = fake_registry(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n".to_vec());
    let r = remote(url.parse().unwrap(), tmp.path());
    assert!(matches!(r.fetch_action(&b, &key("k")).await.unwrap_err(), remote::RemoteError::Unavailable { .. }));
    let url = fake_registry(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n[1,2]".to_vec());
    let r = remote(url.parse().unwrap(), tmp.path());
    assert!(matches!(r.fetch_action(&b, &key("k")).await.unwrap(), Fetched::Damaged(_)));
    assert!(r.list_actions().await.is_err());
}

#[test]
fn plain_http_only_for_loopback_or_insecure() {
    let tmp = tempfile::tempdir().unwrap();
    for (url, insecure, plain) in [
        ("oci://registry.example.com/team/cache", false, false),
        ("oci://10.1.2.3:5000/cache", false, false),
        ("oci://10.1.2.3:5000/cache", true, true),
        ("oci://127.0.0.1:5000/cache", false, true),
        ("oci://localhost:5000/cache", false, true),
        ("oci://[::1]:5000/cache", false, true),
    ] {
        let mut c = config(url.parse().unwrap(), None, tmp.path());
        c.insecure = insecure;
        let r = Remote::new(c).unwrap();
        assert_eq!(r.plain_http(), plain, "{url} insecure={insecure}");
        assert_eq!(r.image_reference(&Digest::of(b"k")), format!("{}:image-{}", &url["oci://".len()..], Digest::of(b"k").hex()));
    }
}

#[tokio::test]
async fn a_registry_that_never_answers_is_unavailable_within_the_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let a = store(&tmp.path().join("a"));
    let m = put(&a, "step", &[("f", b"x")], b"log");
    let url = fake_registry_holding(Vec::new(), Duration::from_secs(30));
    let mut c = config(url.parse().unwrap(), None, tmp.path());
    c.timeout = Duration::from_millis(500);
    let r = Remote::new(c).unwrap();
    let started = Instant::now();
    let err = r.fetch_action(&a, &m.key).await.unwrap_err();
    assert!(matches!(err, remote::RemoteError::Unavailable { .. }), "{err}");
    let err = r.push_action(&a, &m).await.unwrap_err();
    assert!(matches!(err, remote::RemoteError::Unavailable { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(4), "{:?}", started.elapsed());
}

#[tokio::test]
async fn a_tag_list_that_pages_forever_or_lies_is_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let hex = Digest::of(b"k").hex();
    // Always the same page, with a Link to "more": the listing stops (it only moves forward).
    let body = format!(r#"{{"name":"engine/cache","tags":["action-{hex}","action-XYZ","image-{hex}","latest"]}}"#);
    let answer = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nLink: </v2/engine/cache/tags/list?n=1000&last=latest>; rel=\"next\"\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let r = remote(fake_registry(answer.into_bytes()).parse().unwrap(), tmp.path());
    let keys = tokio::time::timeout(Duration::from_secs(10), r.list_actions()).await.expect("the listing ends").unwrap();
    assert_eq!(keys, vec![cache::ActionKey::from_digest(Digest::of(b"k"))]);
    // Not JSON: invalid.
    let r = remote(fake_registry(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n{{{".to_vec()).parse().unwrap(), tmp.path());
    assert!(matches!(r.list_actions().await.unwrap_err(), remote::RemoteError::Invalid { .. }));
}
