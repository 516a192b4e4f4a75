//! The Web Push client against `scripts/webpush-fake.py`: a push service stand-in over
//! HTTPS that checks our requests with implementations independent of ours — it decrypts
//! the body with PyPI's `http_ece` (aes128gcm, with the subscription's private key and auth
//! secret it made) and verifies the VAPID token with `py_vapid` against the `k=` key, its
//! `aud`, `exp` and `sub`.
//!
//! Needs Python with those packages (`bash scripts/python-deps.sh` installs them into
//! `target/contract-venv`, which is looked at first; `XINGE_PYTHON` names another
//! interpreter). Without them the test says it is skipped — except on CI (`CI=1`), where
//! it fails.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};
use xinge_core::config::{NotifyConfig, WebPushConfig};
use xinge_notify::{Notification, Outcome, Providers};
use xinge_proto::api::PushRegistration;

const SUBJECT: &str = "mailto:ops@example.com";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A Python that has `http_ece` and `py_vapid`, if there is one.
fn python() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("XINGE_PYTHON").map(PathBuf::from),
        Some(repo_root().join("target/contract-venv/bin/python")),
        Some(PathBuf::from("python3")),
    ];
    candidates.into_iter().flatten().find(|py| {
        std::process::Command::new(py)
            .args(["-c", "import http_ece, py_vapid"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

fn on_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// The stand-in, running; killed when dropped.
struct Fake {
    _child: Child,
    dir: tempfile::TempDir,
    subscription: Value,
    ca_file: PathBuf,
}

impl Fake {
    async fn start(python: &Path) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pki = pki(dir.path());
        let child = Command::new(python)
            .arg(repo_root().join("scripts/webpush-fake.py"))
            .arg("--cert")
            .arg(&pki.cert_file)
            .arg("--key")
            .arg(&pki.key_file)
            .arg("--dir")
            .arg(dir.path())
            // Its standard input closing (the test gone) stops it too.
            .stdin(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let file = dir.path().join("subscription.json");
        let subscription = bounded(async {
            loop {
                if let Ok(text) = std::fs::read_to_string(&file) {
                    break serde_json::from_str::<Value>(&text).unwrap();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        Self {
            _child: child,
            dir,
            subscription,
            ca_file: pki.ca_file,
        }
    }

    fn registration(&self, endpoint: &str) -> PushRegistration {
        PushRegistration::Webpush {
            endpoint: self.subscription[endpoint].as_str().unwrap().into(),
            p256dh: self.subscription["p256dh"].as_str().unwrap().into(),
            auth: self.subscription["auth"].as_str().unwrap().into(),
        }
    }

    /// What it received, one record per request.
    fn received(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("received.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn providers(&self) -> Providers {
        let (vapid_key, _) = p256_key(self.dir.path(), "vapid.pem");
        let cfg = NotifyConfig {
            webpush: Some(WebPushConfig {
                vapid_key_file: vapid_key,
                subject: SUBJECT.into(),
                ttl_secs: 3600,
                allow_private_endpoints: true,
                limits: limits(Some(self.ca_file.clone()), 3),
            }),
            ..Default::default()
        };
        Providers::new(&cfg, &[]).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_independent_push_service_decrypts_the_payload_and_verifies_vapid() {
    let Some(python) = python() else {
        let why = "Python with http_ece and py_vapid not found (run `bash scripts/python-deps.sh`)";
        assert!(!on_ci(), "{why}: required on CI");
        eprintln!(
            "SKIPPED an_independent_push_service_decrypts_the_payload_and_verifies_vapid: {why}"
        );
        return;
    };
    let fake = Fake::start(&python).await;
    let p = fake.providers();
    let browser = fake.registration("endpoint");
    let send = |r: PushRegistration, n: Notification| {
        let p = &p;
        async move { bounded(p.send(3, "browser", &r, &n)).await }
    };

    let n = notification("n-1", "d:1:2");
    assert_eq!(send(browser.clone(), n.clone()).await, Outcome::Sent);
    let got = fake.received();
    assert_eq!(got.len(), 1);
    let r = &got[0];
    assert_eq!(r["status"], 201, "{r}");
    let payload: Value = serde_json::from_str(r["payload"].as_str().unwrap()).unwrap();
    assert_eq!(
        payload,
        json!({
            "title": "Alice",
            "body": "Are we still on for lunch?",
            "badge": 4,
            "count": 2,
            "data": {"conv": "d:1:2", "seq": "17"},
        })
    );
    let origin = fake.subscription["endpoint"]
        .as_str()
        .unwrap()
        .split("/push/")
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(r["vapid"]["claims"]["aud"], origin.as_str());
    assert_eq!(r["vapid"]["claims"]["sub"], SUBJECT);
    assert_eq!(r["headers"]["TTL"], "3600");
    assert_eq!(r["headers"]["Urgency"], "high");
    assert_eq!(r["headers"]["Content-Encoding"], "aes128gcm");
    // "d:1:2" is not base64url-safe: a hash of it, the same for the whole conversation.
    let topic = r["headers"]["Topic"].as_str().unwrap().to_owned();
    assert_eq!(topic.len(), 32);

    // More sends: one VAPID token for this push service, the same topic; a long text is
    // cut to fit the 4096 bytes push services take, and still decrypts.
    let long = Notification {
        body: "西瓜".repeat(1500),
        ..notification("n-2", "d:1:2")
    };
    assert_eq!(send(browser.clone(), long).await, Outcome::Sent);
    assert_eq!(
        send(browser.clone(), notification("n-3", "d:1:2")).await,
        Outcome::Sent
    );
    let got = fake.received();
    assert!(got.iter().all(|r| r["status"] == 201), "{got:?}");
    let tokens: HashSet<&str> = got
        .iter()
        .map(|r| r["vapid"]["t"].as_str().unwrap())
        .collect();
    assert_eq!(tokens.len(), 1, "one VAPID token per audience");
    assert!(got.iter().all(|r| r["headers"]["Topic"] == topic.as_str()));
    assert!(got[1]["length"].as_u64().unwrap() <= 4096);
    assert!(got[1]["length"].as_u64().unwrap() > 4000);
    let cut: Value = serde_json::from_str(got[1]["payload"].as_str().unwrap()).unwrap();
    assert!(cut["body"].as_str().unwrap().ends_with('…'));

    // An unsubscribed endpoint (410): the registration is no longer valid.
    let gone = fake.registration("gone_endpoint");
    assert!(matches!(send(gone, n.clone()).await, Outcome::Invalid(_)));
    assert_eq!(fake.received().last().unwrap()["status"], 410);

    // Keys that cannot be a subscription's: refused here, nothing sent.
    let before = fake.received().len();
    let PushRegistration::Webpush { endpoint, auth, .. } = browser.clone() else {
        unreachable!()
    };
    let bad_key = PushRegistration::Webpush {
        endpoint: endpoint.clone(),
        p256dh: b64(&[4; 65]),
        auth: auth.clone(),
    };
    assert!(matches!(send(bad_key, n.clone()).await, Outcome::Invalid(r) if r.contains("P-256")));
    let bad_auth = PushRegistration::Webpush {
        endpoint: endpoint.clone(),
        p256dh: fake.subscription["p256dh"].as_str().unwrap().into(),
        auth: b64(&[1; 8]),
    };
    assert!(matches!(send(bad_auth, n.clone()).await, Outcome::Invalid(r) if r.contains("auth")));
    let plain_http = PushRegistration::Webpush {
        endpoint: endpoint.replacen("https://", "http://", 1),
        p256dh: fake.subscription["p256dh"].as_str().unwrap().into(),
        auth,
    };
    assert!(matches!(send(plain_http, n).await, Outcome::Invalid(r) if r.contains("https")));
    assert_eq!(fake.received().len(), before);
}
