//! Password guessing and account creation are limited, as an attacker would try them: wrong
//! passwords per address and per account are refused with `rate_limited` and a
//! `retry_after_ms` once their burst is spent (the right one too, while the limit holds),
//! one stranger cannot lock the account's owner out, a lock-out by many addresses ends
//! when the wait it names is over, and new accounts per address are limited. Unknown and
//! known usernames take as long to refuse. Over real sockets, from several 127.0.0.x source
//! addresses.

// Test code, helpers outside `#[test]` functions included: a failed setup step should stop
// the test where it happened.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{Value, json};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

/// The tests of this file take turns: they all hash passwords, and the timing test must not
/// measure its neighbours' hashing.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// An HTTP client whose connections come from 127.0.0.`n`.
fn from(n: u8) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, n)))
        .build()
        .unwrap()
}

/// `(code, retry_after_ms)` of a login: code `"ok"` when it succeeded.
async fn login(server: &Server, client: &reqwest::Client, password: &str) -> (String, u64) {
    post(
        server,
        client,
        "/v1/sessions",
        json!({
            "username": "alice", "password": password, "device": "laptop"
        }),
    )
    .await
}

async fn post(server: &Server, client: &reqwest::Client, path: &str, body: Value) -> (String, u64) {
    let resp = client
        .post(format!("{}{path}", server.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    let ok = resp.status().is_success();
    let v: Value = resp.json().await.unwrap();
    if ok {
        return ("ok".into(), 0);
    }
    let code = v["code"].as_str().unwrap().to_owned();
    (code, v["retry_after_ms"].as_u64().unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_guessing_is_limited_per_address_and_per_account_and_ends() {
    let _turn = TURN.lock().await;
    let clock = xinge_core::clock::Clock::default();
    let server = start(|c| c.clock = clock.clone()).await;
    let limits = xinge_core::config::LimitsConfig::default();
    server.http().register("alice", PASSWORD).await.unwrap();

    // A stranger at 127.0.0.1 tries 300 passwords: the address's burst of failures is
    // answered `bad_credentials`, everything after it `rate_limited` with a wait.
    let stranger = from(1);
    let mut answers = Vec::new();
    let started = Instant::now();
    for i in 0..300 {
        answers.push(login(&server, &stranger, &format!("guess number {i}")).await);
    }
    let wrong = answers.iter().filter(|a| a.0 == "bad_credentials").count();
    // The burst, and one more for each token the address earned back while this ran.
    let earned = (started.elapsed().as_secs_f64() * limits.login_failures_per_ip_per_sec) as usize;
    let burst = limits.login_failures_per_ip_burst as usize;
    assert!(
        (burst..=burst + earned).contains(&wrong),
        "{wrong} wrong answers"
    );
    for (code, wait) in answers.iter().filter(|a| a.0 != "bad_credentials") {
        assert_eq!(code, "rate_limited");
        assert!(*wait > 0 && *wait <= 10_000, "retry_after_ms {wait}");
    }
    // The right password from that address is refused too: the guesser learns nothing.
    assert_eq!(login(&server, &stranger, PASSWORD).await.0, "rate_limited");
    // The owner, from elsewhere, is not locked out by one stranger.
    let owner = from(2);
    assert_eq!(login(&server, &owner, PASSWORD).await.0, "ok");

    // Many addresses together empty the account's own bucket: then every address is
    // refused, the owner's right password included — but only for the wait it is told.
    let mut refused_for_account = None;
    for n in 3..=10 {
        for i in 0..limits.login_failures_per_ip_burst as usize {
            let (code, wait) = login(&server, &from(n), &format!("spray {n} {i}")).await;
            if code == "rate_limited" {
                refused_for_account.get_or_insert(wait);
            }
        }
    }
    let wait = refused_for_account.expect("the account's burst ran out");
    assert!(wait <= 6_000, "a token within 6 s: {wait} ms");
    let (code, wait) = login(&server, &owner, PASSWORD).await;
    assert_eq!(code, "rate_limited", "the account is out of tokens");
    clock.advance(Duration::from_millis(wait));
    assert_eq!(
        login(&server, &owner, PASSWORD).await.0,
        "ok",
        "the lock-out ends with the wait it named"
    );
    // And the owner's successful logins never counted against the account.
    for _ in 0..30 {
        assert_eq!(login(&server, &owner, PASSWORD).await.0, "ok");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_accounts_per_address_are_limited() {
    let _turn = TURN.lock().await;
    let server = start(|c| {
        c.limits.registrations_per_ip_burst = 3.0;
    })
    .await;
    let account = |name: &str| json!({"username": name, "password": PASSWORD});
    let here = from(1);
    for name in ["one", "two", "three"] {
        assert_eq!(
            post(&server, &here, "/v1/accounts", account(name)).await.0,
            "ok"
        );
    }
    // A malformed request is refused for what it is and does not count.
    let (code, _) = post(&server, &here, "/v1/accounts", account("x")).await;
    assert_eq!(code, "invalid_argument");
    let (code, wait) = post(&server, &here, "/v1/accounts", account("four")).await;
    assert_eq!(code, "rate_limited");
    assert!(wait > 0);
    assert_eq!(
        post(&server, &from(2), "/v1/accounts", account("four"))
            .await
            .0,
        "ok",
        "another address has its own"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_username_is_refused_as_slowly_as_a_wrong_password() {
    let _turn = TURN.lock().await;
    // The real password hashing cost (the tests' default is cheap): the difference the
    // check hides is the hash's time.
    let server = start(|c| {
        let real = xinge_core::config::AuthConfig::default();
        c.auth.argon2_memory_kib = real.argon2_memory_kib;
        c.auth.argon2_iterations = real.argon2_iterations;
        c.limits.login_failures_per_ip_burst = 1e6;
        c.limits.login_failures_per_account_burst = 1e6;
    })
    .await;
    server.http().register("alice", PASSWORD).await.unwrap();
    let client = from(1);
    // One login of `username`, timed.
    let timed = |username: &'static str| {
        let (server, client) = (&server, client.clone());
        async move {
            let t = Instant::now();
            let body = json!({"username": username, "password": "not the password", "device": "x"});
            let (code, _) = post(server, &client, "/v1/sessions", body).await;
            assert_eq!(code, "bad_credentials");
            t.elapsed()
        }
    };
    // Alternating, so that both see whatever else the machine is doing at the time, and
    // each first in turn: what one login leaves behind (a failure counted) would otherwise
    // always land on the other.
    let (mut known, mut unknown) = (Vec::new(), Vec::new());
    for i in 0..10 {
        if i % 2 == 0 {
            known.push(timed("alice").await);
            unknown.push(timed("nobody-at-all").await);
        } else {
            unknown.push(timed("nobody-at-all").await);
            known.push(timed("alice").await);
        }
    }
    let runs = format!("known {known:?}, unknown {unknown:?}");
    known.sort();
    unknown.sort();
    let (known, unknown) = (known[5], unknown[5]);
    // Without the decoy an unknown name answered ~60 times faster; allow the noise of a
    // shared 2-core machine, not that.
    assert!(
        unknown * 2 >= known && known * 2 >= unknown,
        "median known {known:?}, unknown {unknown:?} (in order: {runs})"
    );
    server.stop().await;
}
