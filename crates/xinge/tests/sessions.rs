//! Access that ends ends at once: a device that logs out, logs in again, is logged out from
//! another device, loses its token to a password change or lets it expire has its live
//! long connections (TCP and WebSocket) closed with the matching code within a second, and
//! its token refused over HTTP. The other devices' connections go on working.

// Test code, helpers outside `#[test]` functions included: a failed setup step should stop
// the test where it happened.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::time::Duration;
use tokio::sync::mpsc;
use xinge_client::{Connection, Http, Transport};
use xinge_core::ErrorCode;
use xinge_proto::api::{SendRequest, Signal};

/// How soon a session must end once its access has.
const WITHIN: Duration = Duration::from_secs(1);

struct Live {
    conn: Connection,
    signals: mpsc::Receiver<Signal>,
}

async fn connect(server: &Server, http: &Http, transport: Transport) -> Live {
    let address = match transport {
        Transport::Tcp => server.tcp.to_string(),
        Transport::Ws => server.ws.clone(),
    };
    let (conn, signals) = Connection::connect(transport, &address, http.token().unwrap())
        .await
        .unwrap();
    Live { conn, signals }
}

impl Live {
    /// Waits (at most `within`) for the server to close the connection; the code it gave.
    async fn closed_within(&mut self, within: Duration) -> ErrorCode {
        let closed = tokio::time::timeout(within, async {
            while self.signals.recv().await.is_some() {}
        })
        .await;
        assert!(
            closed.is_ok(),
            "the connection is still open after {within:?}"
        );
        let why = self.conn.close_reason.lock().unwrap().clone();
        why.expect("the server said why it closed").code
    }

    /// The connection still answers.
    async fn alive(&self) {
        self.conn.ping().await.expect("the connection still works");
    }
}

fn text(to: xinge_core::UserId, id: &str) -> SendRequest {
    serde_json::from_value(serde_json::json!({
        "to": to, "client_msg_id": id, "content": {"text": "hello"}
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_a_newer_login_a_password_change_and_a_remote_logout_close_live_connections() {
    let server = start(|_| {}).await;
    let (laptop, a) = server.login("alice", "laptop").await;
    let (phone, _) = server.login("alice", "phone").await;
    let (tablet, _) = server.login("alice", "tablet").await;
    let (bob, b) = server.login("bob", "laptop").await;
    befriend(&laptop, a, &bob, b).await;
    let mut on_laptop = connect(&server, &laptop, Transport::Tcp).await;
    let mut on_phone = connect(&server, &phone, Transport::Ws).await;
    let mut on_tablet = connect(&server, &tablet, Transport::Tcp).await;

    // Logout: the laptop's connection closes, its token is refused; the others live on.
    laptop.logout().await.unwrap();
    assert_eq!(
        on_laptop.closed_within(WITHIN).await,
        ErrorCode::TokenRevoked
    );
    assert_eq!(code(laptop.me().await), "token_revoked");
    on_phone.alive().await;
    on_tablet.alive().await;
    // A message after the logout reaches the devices still logged in.
    bob.send(&text(a, "after-logout")).await.unwrap();
    let signal = tokio::time::timeout(Duration::from_secs(5), on_phone.signals.recv()).await;
    assert!(signal.unwrap().is_some(), "the phone is signalled");

    // The phone logs in again: its older connection is replaced, the new token's works.
    let (phone2, _) = server
        .http()
        .login("alice", PASSWORD, "phone")
        .await
        .unwrap();
    assert_eq!(
        on_phone.closed_within(WITHIN).await,
        ErrorCode::TokenRevoked
    );
    let on_phone2 = connect(&server, &phone2, Transport::Ws).await;
    on_phone2.alive().await;
    on_tablet.alive().await;

    // The device list: the phone (this one, online) and the tablet (online).
    let listed = phone2.devices().await.unwrap().devices;
    let names: Vec<_> = listed
        .iter()
        .map(|d| (d.device.as_str(), d.online, d.current))
        .collect();
    assert_eq!(names, vec![("phone", true, true), ("tablet", true, false)]);
    assert!(
        listed
            .iter()
            .all(|d| d.logged_in_at_ms > 0 && d.last_seen_ms > 0)
    );

    // A password change on the phone logs the tablet out, and only the tablet.
    const NEW: &str = "a new password, long enough";
    assert_eq!(
        code(phone2.change_password("not it at all", NEW).await),
        "bad_credentials"
    );
    on_tablet.alive().await;
    phone2.change_password(PASSWORD, NEW).await.unwrap();
    assert_eq!(
        on_tablet.closed_within(WITHIN).await,
        ErrorCode::TokenRevoked
    );
    assert_eq!(code(tablet.me().await), "token_revoked");
    on_phone2.alive().await;
    phone2.me().await.unwrap();
    let http = server.http();
    assert_eq!(
        code(http.login("alice", PASSWORD, "tablet").await),
        "bad_credentials"
    );
    let (tablet2, _) = http.login("alice", NEW, "tablet").await.unwrap();
    let mut on_tablet2 = connect(&server, &tablet2, Transport::Ws).await;

    // Logged out from the phone, the tablet's new connection closes too.
    assert_eq!(code(phone2.log_out_device("watch").await), "not_found");
    assert_eq!(code(phone2.log_out_device("no/such").await), "not_found");
    phone2.log_out_device("tablet").await.unwrap();
    assert_eq!(
        on_tablet2.closed_within(WITHIN).await,
        ErrorCode::TokenRevoked
    );
    assert_eq!(code(tablet2.me().await), "token_revoked");
    on_phone2.alive().await;
    let listed = phone2.devices().await.unwrap().devices;
    assert_eq!(listed.len(), 1, "only the phone is left: {listed:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_closes_when_its_token_expires() {
    let clock = xinge_core::clock::Clock::default();
    let server = start(|c| {
        c.auth.token_ttl_secs = 600;
        c.clock = clock.clone();
    })
    .await;
    let (alice, _) = server.login("alice", "laptop").await;
    let mut tcp = connect(&server, &alice, Transport::Tcp).await;
    let mut ws = connect(&server, &alice, Transport::Ws).await;
    // Nine minutes on, the token is still good and the connections stay (they heartbeat
    // by pinging; the heartbeat timeout is longer than each step).
    for _ in 0..9 {
        clock.advance(Duration::from_secs(60));
        tcp.alive().await;
        ws.alive().await;
    }
    alice.me().await.unwrap();
    // Past its expiry, both close at the wheel's next tick (once a second).
    clock.advance(Duration::from_secs(61));
    let within = WITHIN + Duration::from_secs(1);
    assert_eq!(tcp.closed_within(within).await, ErrorCode::TokenExpired);
    assert_eq!(ws.closed_within(within).await, ErrorCode::TokenExpired);
    assert_eq!(code(alice.me().await), "token_expired");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_past_its_device_limit_logs_out_its_oldest_login() {
    let server = start(|c| c.auth.max_devices = 2).await;
    let (first, _) = server.login("alice", "one").await;
    let mut on_first = connect(&server, &first, Transport::Tcp).await;
    server.login("alice", "two").await;
    // Logging in an existing device again is no new device.
    let (second, _) = server.http().login("alice", PASSWORD, "two").await.unwrap();
    on_first.alive().await;
    let (third, _) = server.login("alice", "three").await;
    assert_eq!(
        on_first.closed_within(WITHIN).await,
        ErrorCode::TokenRevoked
    );
    assert_eq!(code(first.me().await), "token_revoked");
    second.me().await.unwrap();
    third.me().await.unwrap();
    let names: Vec<_> = third
        .devices()
        .await
        .unwrap()
        .devices
        .into_iter()
        .map(|d| d.device.as_str().to_owned())
        .collect();
    assert_eq!(names, vec!["three", "two"]);
    server.stop().await;
}
