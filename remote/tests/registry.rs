//! Push and fetch against a real registry (Debian's docker-registry on 127.0.0.1).

mod common;

use std::time::{Duration, Instant};

use common::*;
use remote::testing::TestRegistry;
use remote::{Fetched, RemoteError};

#[tokio::test]
async fn an_entry_pushed_from_one_store_is_fetched_into_another_and_restores() {
    let Some(reg) = TestRegistry::start() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let a = store(&tmp.path().join("a"));
    let b = store(&tmp.path().join("b"));
    let m = put(&a, "step", &[("out/x.txt", b"hello"), ("out/sub/y.bin", &[7u8; 300_000]), ("out/empty", b"")], b"log line\n");
    let r = remote(reg.url(), tmp.path());
    assert!(!r.has_action(&m.key).await.unwrap());
    // Uploads run in the background: the futures are Send.
    let sent = tokio::spawn({
        let (r, a, m) = (r.clone(), a.clone(), m.clone());
        async move { r.push_action(&a, &m).await }
    })
    .await
    .unwrap()
    .unwrap();
    // x, y, empty, the log, the config.
    assert_eq!((sent.blobs, sent.skipped), (5, 0), "{sent:?}");
    assert!(sent.bytes >= 300_005);
    assert!(r.has_action(&m.key).await.unwrap());

    let fetched = tokio::spawn({
        let (r, b, k) = (r.clone(), b.clone(), m.key);
        async move { r.fetch_action(&b, &k).await }
    });
    let Fetched::Hit { manifest, transfer } = fetched.await.unwrap().unwrap() else { panic!("a hit") };
    assert_eq!(*manifest, without_inputs(&m));
    assert_eq!(b.get(&m.key), Some(without_inputs(&m)));
    // Only y is a request of its own: the config, x, empty and the log are small enough to
    // travel inside the manifest.
    assert_eq!((transfer.blobs, transfer.skipped), (1, 0), "{transfer:?}");
    assert!(transfer.bytes >= 300_005);
    let dest = tmp.path().join("restored");
    std::fs::create_dir(&dest).unwrap();
    b.restore(&manifest, &dest).unwrap();
    assert_eq!(std::fs::read(dest.join("out/x.txt")).unwrap(), b"hello");
    assert_eq!(std::fs::read(dest.join("out/sub/y.bin")).unwrap(), vec![7u8; 300_000]);
    assert_eq!(b.read_blob(&m.log).unwrap(), b"log line\n");

    // A second fetch into a store that has every blob downloads nothing but the manifest.
    let Fetched::Hit { transfer, .. } = r.fetch_action(&b, &m.key).await.unwrap() else { panic!("a hit") };
    assert_eq!((transfer.blobs, transfer.skipped), (0, 4), "{transfer:?}");
}

#[tokio::test]
async fn a_second_push_skips_every_blob_and_a_shared_file_is_uploaded_once() {
    let Some(reg) = TestRegistry::start() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let a = store(&tmp.path().join("a"));
    let r = remote(reg.url(), tmp.path());
    let one = put(&a, "one", &[("f", b"shared content"), ("g", b"only one")], b"log one");
    let two = put(&a, "two", &[("h", b"shared content"), ("i", b"only two")], b"log two");
    let first = r.push_action(&a, &one).await.unwrap();
    assert_eq!((first.blobs, first.skipped), (4, 0), "{first:?}");
    let puts = wait_blob_puts(&reg, 4);
    assert_eq!(puts, 4);

    let again = r.push_action(&a, &one).await.unwrap();
    assert_eq!((again.blobs, again.bytes, again.skipped), (0, 0, 4), "{again:?}");
    let second = r.push_action(&a, &two).await.unwrap();
    // `shared content` is there already: only `only two`, the log and the config are sent.
    assert_eq!((second.blobs, second.skipped), (3, 1), "{second:?}");
    assert_eq!(wait_blob_puts(&reg, 7), 7, "{}", reg.log());
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(blob_puts(&reg), 7, "no blob was uploaded twice");

    // Read-only: nothing is sent.
    let mut ro = config(reg.url(), None, tmp.path());
    ro.mode = remote::Mode::Read;
    let ro = remote::Remote::new(ro).unwrap();
    let three = put(&a, "three", &[("j", b"only three")], b"log three");
    assert!(matches!(ro.push_action(&a, &three).await.unwrap_err(), RemoteError::Denied { .. }));
    assert!(!r.has_action(&three.key).await.unwrap());

    let mut listed = r.list_actions().await.unwrap();
    listed.sort_by_key(|k| k.digest());
    let mut expected = vec![one.key, two.key];
    expected.sort_by_key(|k| k.digest());
    assert_eq!(listed, expected);
}

#[tokio::test]
async fn an_unknown_key_is_a_miss_and_an_empty_repository_lists_nothing() {
    let Some(reg) = TestRegistry::start() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let b = store(&tmp.path().join("b"));
    let r = remote(reg.url_with_repo("never/pushed"), tmp.path());
    assert!(matches!(r.fetch_action(&b, &key("nothing")).await.unwrap(), Fetched::Miss));
    assert!(!r.has_action(&key("nothing")).await.unwrap());
    assert_eq!(r.list_actions().await.unwrap(), vec![]);
}

#[tokio::test]
async fn a_tampered_blob_in_the_registry_is_damaged_and_nothing_is_stored() {
    let Some(reg) = TestRegistry::start() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let a = store(&tmp.path().join("a"));
    let b = store(&tmp.path().join("b"));
    // Larger than what travels inside the manifest: read from the registry's storage.
    let (original, tampered) = (vec![b'o'; 4096], vec![b't'; 4096]);
    let m = put(&a, "step", &[("good", b"good bytes"), ("bad", &original)], b"log");
    let r = remote(reg.url(), tmp.path());
    r.push_action(&a, &m).await.unwrap();
    let bad = cache::Digest::of(&original);
    std::fs::write(reg.blob_data_path(&bad), &tampered).unwrap();

    let Fetched::Damaged(why) = r.fetch_action(&b, &m.key).await.unwrap() else { panic!("damaged") };
    assert!(why.contains(&bad.short()), "{why}");
    assert_eq!(b.get(&m.key), None);
    assert!(!b.manifest_path(&m.key).exists());
    assert!(!b.has_blob(&bad), "the tampered blob never gets its name");

    // A blob missing from the registry is damaged too.
    std::fs::remove_dir_all(reg.blob_data_path(&bad).parent().unwrap()).unwrap();
    let Fetched::Damaged(_) = r.fetch_action(&b, &m.key).await.unwrap() else { panic!("damaged") };
    assert!(!b.manifest_path(&m.key).exists());
}

#[tokio::test]
async fn a_stopped_registry_is_unavailable_fast() {
    let Some(mut reg) = TestRegistry::start() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let a = store(&tmp.path().join("a"));
    let m = put(&a, "step", &[("f", b"x")], b"log");
    let r = remote(reg.url(), tmp.path());
    reg.stop();
    let started = Instant::now();
    let err = r.fetch_action(&a, &m.key).await.unwrap_err();
    assert!(matches!(err, RemoteError::Unavailable { .. }), "{err}");
    let err = r.push_action(&a, &m).await.unwrap_err();
    assert!(matches!(err, RemoteError::Unavailable { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());

    reg.start_again();
    r.push_action(&a, &m).await.unwrap();
    assert!(r.has_action(&m.key).await.unwrap());
}

#[tokio::test]
async fn a_push_of_blobs_the_registry_has_costs_one_head_each_and_no_auth_round_trips() {
    let Some(reg) = TestRegistry::start() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let a = store(&tmp.path().join("a"));
    let m = put(&a, "step", &[("f", b"x"), ("g", b"y")], b"log");
    let r = remote(reg.url(), tmp.path());
    r.push_action(&a, &m).await.unwrap();
    // The manifest PUT is the last request of a push: once it is logged, all are.
    let logged = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while reg.count_requests("PUT", "/manifests/") < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    logged(1);
    assert_eq!(blob_puts(&reg), 4, "f, g, the log and the config");
    // Another client (another run): f, g and the log cost one HEAD each; the config, which
    // names the key and so is asked for by no HEAD, is sent again; the manifest is put again.
    let heads = reg.count_requests("HEAD", "/blobs/");
    let other = remote(reg.url(), tmp.path());
    other.push_action(&a, &m).await.unwrap();
    logged(2);
    assert_eq!(reg.count_requests("HEAD", "/blobs/") - heads, 3);
    assert_eq!(blob_puts(&reg), 5);
    // The same client again: it knows every blob is there, so only the manifest is put.
    let before = reg.requests().len();
    other.push_action(&a, &m).await.unwrap();
    logged(3);
    let after: Vec<_> = reg.requests()[before..].to_vec();
    assert!(after.len() == 1 && after[0].0 == "PUT" && after[0].1.contains("/manifests/"), "{after:#?}");
    let probes = reg.requests().iter().filter(|(m, p)| m == "GET" && p == "/v2/").count();
    // The test registry's readiness check, then one probe per client.
    assert_eq!(probes, 3, "{:#?}", reg.requests());
}
