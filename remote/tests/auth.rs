//! A registry with htpasswd basic auth, and one with bearer tokens from a token service:
//! credentials from Docker's config.json work; without them (or with a wrong password) the
//! refusal is `Denied`; the password appears in no error, Debug or log line of ours.

mod common;

use common::*;
use remote::testing::TestRegistry;
use remote::{Fetched, Remote, RemoteError};

const USER: &str = "builder";
const PASSWORD: &str = "pw-Secr3t-never-shown";

#[tokio::test]
async fn config_json_credentials_authenticate_and_never_show() {
    let Some(reg) = TestRegistry::start_with_auth(USER, PASSWORD) else { return };
    let tmp = tempfile::tempdir().unwrap();
    let a = store(&tmp.path().join("a"));
    let b = store(&tmp.path().join("b"));
    let m = put(&a, "step", &[("f", b"content")], b"log");
    let docker = reg.docker_config_with(&tmp.path().join("docker"), USER, PASSWORD);
    let r = Remote::new(config(reg.url(), Some(docker), tmp.path())).unwrap();
    assert!(r.has_credentials());
    let sent = r.push_action(&a, &m).await.unwrap();
    assert_eq!(sent.blobs, 3);
    let Fetched::Hit { manifest, .. } = r.fetch_action(&b, &m.key).await.unwrap() else { panic!("a hit") };
    assert_eq!(*manifest, without_inputs(&m));
    assert_eq!(r.list_actions().await.unwrap(), vec![m.key]);

    let probes = reg.requests().iter().filter(|(m, p)| m == "GET" && p == "/v2/").count();
    // The readiness check, then one authentication per operation (pull, push).
    assert_eq!(probes, 3, "authentication is not repeated per request: {:#?}", reg.requests());

    let auth = r.daemon_auth().expect("credentials for the daemon");
    assert_eq!((auth.username.as_str(), auth.password.as_str(), auth.server.as_str()), (USER, PASSWORD, reg.registry().as_str()));
    for shown in [format!("{auth:?}"), format!("{r:?}")] {
        assert!(!shown.contains(PASSWORD), "{shown}");
    }
}

#[tokio::test]
async fn without_credentials_or_with_a_wrong_password_access_is_denied() {
    let Some(reg) = TestRegistry::start_with_auth(USER, PASSWORD) else { return };
    let tmp = tempfile::tempdir().unwrap();
    let a = store(&tmp.path().join("a"));
    let m = put(&a, "step", &[("f", b"content")], b"log");
    let anonymous = Remote::new(config(reg.url(), None, tmp.path())).unwrap();
    assert!(!anonymous.has_credentials());
    assert!(anonymous.daemon_auth().is_none());
    let wrong = reg.docker_config_with(&tmp.path().join("wrong"), USER, "not-the-password");
    let wrong = Remote::new(config(reg.url(), Some(wrong), tmp.path())).unwrap();
    for r in [&anonymous, &wrong] {
        let errors = [
            r.push_action(&a, &m).await.unwrap_err(),
            r.fetch_action(&a, &m.key).await.unwrap_err(),
            r.has_action(&m.key).await.unwrap_err(),
            r.list_actions().await.unwrap_err(),
        ];
        for err in errors {
            assert!(matches!(err, RemoteError::Denied { .. }), "{err}");
            for shown in [err.to_string(), format!("{err:?}")] {
                assert!(!shown.contains(PASSWORD) && !shown.contains("not-the-password"), "{shown}");
            }
        }
    }
    assert!(!reg.log().contains(PASSWORD));
}

/// The bearer-token flow against the registry's real token auth: credentials from config.json
/// are exchanged at the token service for a token per operation, which the registry checks;
/// no credentials get a token that grants nothing (denied), wrong ones are refused by the token
/// service (denied). The password is in no error and no log line of the registry.
#[tokio::test]
async fn bearer_tokens_are_fetched_with_config_json_credentials() {
    let Some(reg) = TestRegistry::start_with_token(USER, PASSWORD) else { return };
    let tmp = tempfile::tempdir().unwrap();
    let a = store(&tmp.path().join("a"));
    let b = store(&tmp.path().join("b"));
    let m = put(&a, "step", &[("f", b"content"), ("big", &[9u8; 5000])], b"log");
    let docker = reg.docker_config_with(&tmp.path().join("docker"), USER, PASSWORD);
    let r = Remote::new(config(reg.url(), Some(docker), tmp.path())).unwrap();
    r.push_action(&a, &m).await.unwrap();
    let Fetched::Hit { manifest, transfer } = r.fetch_action(&b, &m.key).await.unwrap() else { panic!("a hit") };
    assert_eq!(*manifest, without_inputs(&m));
    assert_eq!(transfer.blobs, 1, "the 5000-byte blob was fetched with the token: {transfer:?}");
    assert_eq!(r.list_actions().await.unwrap(), vec![m.key]);
    let tokens = reg.token_requests();
    assert!(!tokens.is_empty() && tokens.iter().all(|t| t.starts_with("user ")), "{tokens:#?}");
    assert!(tokens.iter().any(|t| t.contains("push")), "a push token was asked for: {tokens:#?}");
    // Tokens are reused: a handful of exchanges, not one per request.
    assert!(tokens.len() <= 4, "{tokens:#?}");

    let anonymous = Remote::new(config(reg.url(), None, tmp.path())).unwrap();
    let wrong = reg.docker_config_with(&tmp.path().join("wrong"), USER, "not-the-password");
    let wrong = Remote::new(config(reg.url(), Some(wrong), tmp.path())).unwrap();
    for r in [&anonymous, &wrong] {
        let errors = [r.push_action(&a, &m).await.unwrap_err(), r.fetch_action(&b, &m.key).await.unwrap_err()];
        for err in errors {
            assert!(matches!(err, RemoteError::Denied { .. }), "{err}");
            assert!(!err.to_string().contains(PASSWORD) && !format!("{err:?}").contains("not-the-password"), "{err:?}");
        }
    }
    let tokens = reg.token_requests();
    assert!(tokens.iter().any(|t| t.starts_with("anonymous ")) && tokens.iter().any(|t| t.starts_with("refused ")), "{tokens:#?}");
    assert!(!reg.log().contains(PASSWORD));
}
