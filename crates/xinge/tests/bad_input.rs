//! Bad input and authorization: every case gets a stable error code, nothing panics, and
//! nobody else's data is touched or shown.

// Test code, helpers outside `#[test]` functions included: a failed setup step should stop
// the test where it happened.
#![allow(clippy::unwrap_used)]

mod common;

use bytes::{Bytes, BytesMut};
use common::*;
use futures_util::{SinkExt, StreamExt};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use xinge_client::api::{RecallRequest, SendRequest};
use xinge_client::{Connection, Device, DeviceOptions, Transport};
use xinge_core::error::ApiError;
use xinge_core::{ConvId, DeviceId, UserId};
use xinge_logic::token::{Claims, TokenSigner};
use xinge_proto::{Frame, cmd};

/// Reads frames from a raw TCP connection until the server closes it; returns the CLOSE
/// frame's error (if it sent one) and every other frame.
async fn read_until_closed(s: &mut TcpStream) -> (Option<ApiError>, Vec<Frame>) {
    let mut frames = Vec::new();
    let mut close = None;
    loop {
        let len = match tokio::time::timeout(Duration::from_secs(10), s.read_u32()).await {
            Ok(Ok(l)) => l as usize,
            Ok(Err(_)) => return (close, frames),
            Err(_) => panic!("server did not close the connection"),
        };
        let mut buf = vec![0; len];
        s.read_exact(&mut buf).await.unwrap();
        let f = Frame::decode(Bytes::from(buf), usize::MAX).unwrap();
        if f.cmd == cmd::CLOSE {
            close = serde_json::from_slice(&f.body).ok();
        } else {
            frames.push(f);
        }
    }
}

async fn raw_tcp(server: &Server) -> TcpStream {
    TcpStream::connect(server.tcp).await.unwrap()
}

async fn request(s: &mut TcpStream, f: Frame) -> Frame {
    s.write_all(&f.encode_prefixed()).await.unwrap();
    read_frame(s).await
}

fn err_of(f: &Frame) -> ApiError {
    assert!(f.is_error(), "an error reply");
    serde_json::from_slice(&f.body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_frames_close_the_connection_with_a_reason() {
    let server = start(|c| c.gateway.max_frame_bytes = 1024).await;
    let (alice, _) = server.login("alice", "laptop").await;
    let token = alice.token().unwrap().to_owned();

    // A length prefix shorter than a header.
    let mut s = raw_authed(&server, &token).await;
    s.write_all(&3u32.to_be_bytes()).await.unwrap();
    assert_eq!(
        read_until_closed(&mut s).await.0.unwrap().code.as_str(),
        "bad_request"
    );

    // A non-zero reserved header byte.
    let mut s = raw_authed(&server, &token).await;
    s.write_all(&[0, 0, 0, 8, 0, 2, 0, 7, 0, 0, 0, 1])
        .await
        .unwrap();
    assert_eq!(
        read_until_closed(&mut s).await.0.unwrap().code.as_str(),
        "bad_request"
    );

    // A frame over the limit is refused from its prefix, before it is read.
    let mut s = raw_authed(&server, &token).await;
    s.write_all(&(10u32 << 20).to_be_bytes()).await.unwrap();
    assert_eq!(
        read_until_closed(&mut s).await.0.unwrap().code.as_str(),
        "too_large"
    );

    // Before authentication, too.
    let mut s = raw_tcp(&server).await;
    s.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    assert_eq!(
        read_until_closed(&mut s).await.0.unwrap().code.as_str(),
        "too_large"
    );

    // WebSocket: a binary message over the limit ends the connection.
    let url = format!("{}?token={token}", server.ws);
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let _greeting = ws.next().await.unwrap().unwrap();
    ws.send(Message::Binary(vec![0u8; 4096].into()))
        .await
        .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(m)) = ws.next().await {
            if m.is_close() {
                break;
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "oversized WebSocket message closes the connection"
    );

    // WebSocket text mode: malformed JSON closes with bad_request.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{url}&mode=text"))
        .await
        .unwrap();
    let greeting = ws.next().await.unwrap().unwrap();
    assert!(greeting.is_text(), "text mode greets in JSON");
    ws.send(Message::Text("{not json".into())).await.unwrap();
    let mut close_code = None;
    while let Some(Ok(m)) = ws.next().await {
        if let Message::Text(t) = m {
            let f = Frame::decode_text(t.as_str(), usize::MAX).unwrap();
            if f.cmd == cmd::CLOSE {
                close_code = serde_json::from_slice::<ApiError>(&f.body)
                    .ok()
                    .map(|e| e.code);
            }
        }
    }
    assert_eq!(close_code.unwrap().as_str(), "bad_request");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_and_unknown_commands_get_errors_and_the_connection_lives_on() {
    let server = start(|_| {}).await;
    let (alice, _) = server.login("alice", "laptop").await;
    let (bob, b) = server.login("bob", "laptop").await;
    befriend(&alice, UserId(1), &bob, b).await;
    let mut s = raw_authed(&server, alice.token().unwrap()).await;
    let client = reqwest::Client::new();
    let post = |path: &str, body: Vec<u8>| {
        client
            .post(format!("{}{path}", server.base))
            .bearer_auth(alice.token().unwrap())
            .header("content-type", "application/json")
            .body(body)
    };
    let send = |cmid: &str, content: serde_json::Value| SendRequest {
        to: Some(b),
        conv: None,
        client_msg_id: cmid.into(),
        content,
        ..Default::default()
    };
    let tcp = |cmd, id, body: &'static [u8]| Via::Tcp(Frame::request(cmd, id, body));
    // Each row: what it checks, the request, the HTTP status (for plain HTTP requests), and
    // the error code it must get.
    let cases = [
        // The long connection: the error answers the request, and the connection lives on.
        Case::new(
            "tcp: an unknown command",
            tcp(999, 5, b"{}"),
            None,
            "unknown_command",
        ),
        Case::new(
            "tcp: a reserved command",
            tcp(50, 6, b""),
            None,
            "unknown_command",
        ),
        Case::new(
            "tcp: invalid JSON",
            tcp(cmd::SEND, 7, b"{\"to\": oops"),
            None,
            "bad_request",
        ),
        Case::new(
            "tcp: unknown fields are refused",
            tcp(
                cmd::SEND,
                8,
                b"{\"to\":2,\"client_msg_id\":\"x\",\"content\":{},\"extra\":1}",
            ),
            None,
            "bad_request",
        ),
        Case::new(
            "tcp: invalid UTF-8",
            tcp(cmd::SYNC, 9, b"\xff\xfe"),
            None,
            "bad_request",
        ),
        Case::new(
            "tcp: AUTH twice",
            tcp(cmd::AUTH, 10, b"{\"token\":\"x\"}"),
            None,
            "conflict",
        ),
        // HTTP: invalid JSON, wrong types, oversized bodies, unknown paths.
        Case::new(
            "http: invalid JSON",
            Via::http(post("/v1/messages", b"{bad".to_vec())),
            Some(400),
            "bad_request",
        ),
        Case::new(
            "http: a wrong type",
            Via::http(post(
                "/v1/messages",
                b"{\"to\":\"x\",\"client_msg_id\":\"1\",\"content\":{}}".to_vec(),
            )),
            Some(400),
            "bad_request",
        ),
        Case::new(
            "http: a body over the limit",
            Via::http(post("/v1/messages", vec![b' '; 100 * 1024])),
            Some(413),
            "too_large",
        ),
        Case::new(
            "http: an unknown path",
            Via::http(client.get(format!("{}/v1/nope", server.base))),
            Some(404),
            "not_found",
        ),
        Case::new(
            "http: a conversation id that is not one",
            Via::http(
                client
                    .get(format!("{}/v1/conversations/zzz/messages", server.base))
                    .bearer_auth(alice.token().unwrap()),
            ),
            None,
            "invalid_argument",
        ),
        // Content rules: must be an object, not too large; client_msg_id bounded.
        Case::sdk(
            "content that is not an object",
            async {
                code(
                    alice
                        .send(&send("a", serde_json::json!("just a string")))
                        .await,
                )
            },
            "invalid_argument",
        ),
        Case::sdk(
            "content over the limit",
            async {
                code(
                    alice
                        .send(&send("b", serde_json::json!({ "t": "x".repeat(20_000) })))
                        .await,
                )
            },
            "too_large",
        ),
        Case::sdk(
            "an empty client_msg_id",
            async { code(alice.send(&send("", serde_json::json!({}))).await) },
            "invalid_argument",
        ),
        Case::sdk(
            "a client_msg_id over 64 bytes",
            async {
                code(
                    alice
                        .send(&send(&"c".repeat(65), serde_json::json!({})))
                        .await,
                )
            },
            "invalid_argument",
        ),
        Case::sdk(
            "a message to oneself",
            async {
                let to_self = SendRequest {
                    to: Some(UserId(1)),
                    ..send("d", serde_json::json!({}))
                };
                code(alice.send(&to_self).await)
            },
            "invalid_argument",
        ),
        Case::sdk(
            "a message to nobody",
            async {
                let to_nobody = SendRequest {
                    to: Some(UserId(777)),
                    ..send("e", serde_json::json!({}))
                };
                code(alice.send(&to_nobody).await)
            },
            "not_found",
        ),
        Case::sdk(
            "the history of a group that does not exist",
            async { code(alice.history("g1".parse().unwrap(), None, None, 5).await) },
            "not_found",
        ),
        // Accounts.
        Case::sdk(
            "a username with bad characters",
            async { code(server.http().register("Bad Name!", PASSWORD).await) },
            "invalid_argument",
        ),
        Case::sdk(
            "a password too short",
            async { code(server.http().register("shorty", "short").await) },
            "invalid_argument",
        ),
        Case::sdk(
            "a username taken",
            async { code(server.http().register("alice", PASSWORD).await) },
            "conflict",
        ),
        Case::sdk(
            "a wrong password",
            async { code(server.http().login("alice", "wrong password", "x").await) },
            "bad_credentials",
        ),
        Case::sdk(
            "a user who does not exist",
            async { code(server.http().login("nobody", PASSWORD, "x").await) },
            "bad_credentials",
        ),
    ];
    for Case {
        what,
        via,
        status,
        code,
    } in cases
    {
        let got = match via {
            Via::Tcp(f) => {
                let id = f.req_id;
                let answer = request(&mut s, f).await;
                assert_eq!(answer.req_id, id, "{what}: the answer to its request");
                err_of(&answer).code.as_str()
            }
            Via::Http(req) => {
                let r = req.send().await.unwrap();
                if let Some(status) = status {
                    assert_eq!(r.status().as_u16(), status, "{what}: the HTTP status");
                }
                r.json::<ApiError>().await.unwrap().code.as_str()
            }
            Via::Sdk(call) => call.await,
        };
        assert_eq!(got, code, "{what}");
    }
    // Still alive and answering after every bad frame.
    let f = request(&mut s, Frame::request(cmd::PING, 11, Bytes::new())).await;
    assert!(f.is_response() && !f.is_error() && f.req_id == 11);
    server.stop().await;
}

/// How a [`Case`]'s request is made.
enum Via<'a> {
    /// A frame on a raw, authenticated TCP connection.
    Tcp(Frame),
    /// A plain HTTP request (boxed: a builder is large, and a table holds many).
    Http(Box<reqwest::RequestBuilder>),
    /// A call through the SDK, giving the code of its answer.
    Sdk(std::pin::Pin<Box<dyn std::future::Future<Output = &'static str> + 'a>>),
}

/// A bad request, and the error it must get back.
struct Case<'a> {
    what: &'static str,
    via: Via<'a>,
    /// The HTTP status, checked where given.
    status: Option<u16>,
    code: &'static str,
}

impl Via<'_> {
    fn http(req: reqwest::RequestBuilder) -> Self {
        Self::Http(Box::new(req))
    }
}

impl<'a> Case<'a> {
    fn new(what: &'static str, via: Via<'a>, status: Option<u16>, code: &'static str) -> Self {
        Self {
            what,
            via,
            status,
            code,
        }
    }

    fn sdk(
        what: &'static str,
        call: impl std::future::Future<Output = &'static str> + 'a,
        code: &'static str,
    ) -> Self {
        Self::new(what, Via::Sdk(Box::pin(call)), None, code)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_expired_and_revoked_tokens_are_refused_everywhere() {
    let server = start(|_| {}).await;
    let (alice, a) = server.login("alice", "laptop").await;
    let token = alice.token().unwrap().to_owned();

    let signer = TokenSigner::new(SECRET.as_bytes().to_vec());
    let expired = signer.sign(&Claims {
        uid: a,
        dev: DeviceId::parse("laptop").unwrap(),
        tid: 1,
        exp: 1,
    });
    let forged = TokenSigner::new(b"not-the-server-secret-not-the-server".to_vec()).sign(&Claims {
        uid: a,
        dev: DeviceId::parse("laptop").unwrap(),
        tid: 1,
        exp: u64::MAX,
    });
    // A valid signature over a device that never logged in is as good as revoked.
    let unknown_device = signer.sign(&Claims {
        uid: a,
        dev: DeviceId::parse("other").unwrap(),
        tid: 1,
        exp: u64::MAX,
    });

    for (bad, want) in [
        ("garbage", "unauthenticated"),
        (forged.as_str(), "unauthenticated"),
        (expired.as_str(), "token_expired"),
        (unknown_device.as_str(), "token_revoked"),
    ] {
        assert_eq!(
            code(server.http().with_token(bad).me().await),
            want,
            "http with {want}"
        );
        assert_eq!(
            code(Connection::connect(Transport::Tcp, &server.tcp.to_string(), bad).await),
            want,
            "tcp with {want}"
        );
        assert_eq!(
            code(Connection::connect(Transport::Ws, &server.ws, bad).await),
            want,
            "ws with {want}"
        );
    }
    let r = reqwest::Client::new()
        .get(format!("{}/v1/me", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);

    // Logging out revokes this device's token at once, and only this device's.
    let (phone, _) = server.login("alice", "phone").await;
    let (conn, _signals) = Connection::connect(Transport::Tcp, &server.tcp.to_string(), &token)
        .await
        .unwrap();
    alice.logout().await.unwrap();
    assert_eq!(code(alice.me().await), "token_revoked");
    assert_eq!(
        code(Connection::connect(Transport::Ws, &server.ws, &token).await),
        "token_revoked"
    );
    assert!(phone.me().await.is_ok());
    drop(conn);

    // Logging in again on the same device replaces its old token.
    let (again, _) = server.login("alice", "phone").await;
    assert_eq!(code(phone.me().await), "token_revoked");
    assert!(again.me().await.is_ok());

    // The first frame must be AUTH.
    let mut s = raw_tcp(&server).await;
    s.write_all(&Frame::request(cmd::SYNC, 1, &b"{}"[..]).encode_prefixed())
        .await
        .unwrap();
    let (close, frames) = read_until_closed(&mut s).await;
    assert_eq!(close.unwrap().code.as_str(), "unauthenticated");
    assert_eq!(err_of(&frames[0]).code.as_str(), "unauthenticated");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_touches_a_conversation_that_is_not_theirs() {
    let server = start(|_| {}).await;
    let (alice, a) = server.login("alice", "laptop").await;
    let (bob, b) = server.login("bob", "laptop").await;
    let (carol, _c) = server.login("carol", "laptop").await;
    befriend(&alice, a, &bob, b).await;
    let sent = alice
        .send(&SendRequest {
            to: Some(b),
            conv: None,
            client_msg_id: "secret".into(),
            content: serde_json::json!({ "text": "for bob only" }),
            ..Default::default()
        })
        .await
        .unwrap();
    let conv = ConvId::direct(a, b);

    assert_eq!(code(carol.history(conv, None, None, 10).await), "not_found");
    assert_eq!(code(carol.mark_read(conv, 1).await), "not_found");
    assert_eq!(code(carol.read_state(conv, 1).await), "not_found");
    assert_eq!(code(carol.typing(conv).await), "not_found");
    let recall = RecallRequest {
        conv,
        conv_seq: sent.conv_seq,
        client_msg_id: "r".into(),
    };
    assert_eq!(code(carol.recall(&recall).await), "not_found");
    assert_eq!(
        code(bob.recall(&recall).await),
        "forbidden",
        "a member, but not the sender"
    );
    let into_theirs = SendRequest {
        to: None,
        conv: Some(conv),
        client_msg_id: "x".into(),
        content: serde_json::json!({}),
        ..Default::default()
    };
    assert_eq!(code(carol.send(&into_theirs).await), "not_found");
    assert!(
        carol
            .conversations()
            .await
            .unwrap()
            .conversations
            .is_empty()
    );
    assert!(carol.sync(0, None).await.unwrap().entries.is_empty());
    assert!(
        carol.presence(&[a, b]).await.unwrap().presence.is_empty(),
        "presence is for friends"
    );

    // The same over the long connection.
    let (conn, _s) = Connection::connect(
        Transport::Tcp,
        &server.tcp.to_string(),
        carol.token().unwrap(),
    )
    .await
    .unwrap();
    let hist = xinge_client::api::HistoryRequest {
        conv,
        before: None,
        after: None,
        limit: None,
    };
    let r: Result<xinge_client::api::HistoryResponse, _> = conn.request(cmd::HISTORY, &hist).await;
    assert_eq!(code(r), "not_found");
    let r: Result<xinge_client::api::SendResponse, _> = conn.request(cmd::SEND, &into_theirs).await;
    assert_eq!(code(r), "not_found");

    // Nothing of theirs changed.
    let page = bob.history(conv, None, None, 10).await.unwrap();
    assert_eq!(page.messages.len(), 1);
    assert_eq!(
        bob.conversations().await.unwrap().conversations[0].read_seq,
        0
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_unauthenticated_connections_are_cut_off_in_bounded_time() {
    // The heartbeat timeout keeps its default; the server's clock is moved past it.
    let clock = xinge_core::clock::Clock::default();
    let server = start(|c| {
        c.gateway.auth_timeout_secs = 1;
        c.clock = clock.clone();
    })
    .await;
    let timeout = xinge_core::config::GatewayConfig::default().heartbeat_timeout_secs;
    let secs = |s: u64| Duration::from_secs(s);
    let (alice, _) = server.login("alice", "laptop").await;
    let mut silent = raw_authed(&server, alice.token().unwrap()).await;
    let mut talking = raw_authed(&server, alice.token().unwrap()).await;
    // Two thirds of the timeout pass; one connection heartbeats, the other says nothing.
    clock.advance(secs(u64::from(timeout) * 2 / 3));
    let f = request(&mut talking, Frame::request(cmd::PING, 1, Bytes::new())).await;
    assert!(f.is_response());
    // Past the silent one's timeout (but not the other's): the next tick of the wheel
    // closes it, within about a second of real time.
    clock.advance(secs(u64::from(timeout) / 3 + 2));
    let started = std::time::Instant::now();
    let (close, _) = read_until_closed(&mut silent).await;
    assert_eq!(close.unwrap().code.as_str(), "heartbeat_timeout");
    assert!(started.elapsed() < Duration::from_secs(5));
    // The tick that closed it looked at the other one too and kept it.
    let f = request(&mut talking, Frame::request(cmd::PING, 2, Bytes::new())).await;
    assert!(f.is_response(), "a connection that heartbeats stays");

    let mut s = raw_tcp(&server).await;
    let (close, _) = read_until_closed(&mut s).await;
    assert_eq!(close.unwrap().code.as_str(), "unauthenticated");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_gateway_refuses_with_unavailable() {
    let server = start(|c| c.gateway.max_connections = 1).await;
    let (alice, _) = server.login("alice", "laptop").await;
    let token = alice.token().unwrap().to_owned();
    let (_held, _s) = Connection::connect(Transport::Tcp, &server.tcp.to_string(), &token)
        .await
        .unwrap();
    assert_eq!(
        code(Connection::connect(Transport::Tcp, &server.tcp.to_string(), &token).await),
        "unavailable"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_disconnected_and_catches_up_by_pull() {
    let server = start(|c| {
        c.gateway.send_queue = 8;
        // Large inline signals, so that the kernel's socket buffers (up to 4 MiB here)
        // fill before the flood ends.
        c.chat.inline_max_bytes = 20_000;
    })
    .await;
    let (alice, a) = server.login("alice", "laptop").await;
    let (bob, b) = server.login("bob", "laptop").await;
    befriend(&alice, a, &bob, b).await;

    // Bob's slow device: a tiny receive window, and it never reads after auth.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut slow = sock.connect(server.tcp).await.unwrap();
    let body = serde_json::to_vec(&serde_json::json!({ "token": bob.token().unwrap() })).unwrap();
    slow.write_all(&Frame::request(cmd::AUTH, 1, body).encode_prefixed())
        .await
        .unwrap();

    let n = 400;
    let filler = "x".repeat(15_000);
    for i in 0..n {
        let req = SendRequest {
            to: Some(b),
            conv: None,
            client_msg_id: format!("f{i}"),
            content: serde_json::json!({ "t": filler }),
            ..Default::default()
        };
        alice.send(&req).await.unwrap();
    }
    // Now read: the server must have given up on this connection, so the stream ends
    // before all n signals are through.
    let (_, frames) = read_until_closed(&mut slow).await;
    let signals = frames.iter().filter(|f| f.cmd == cmd::SIGNAL).count();
    assert!(
        signals < n,
        "the slow connection was cut off ({signals} of {n} signals)"
    );

    // A fresh pull has everything, in order.
    let mut after = 0;
    let mut got = 0;
    loop {
        let page = bob.sync(after, None).await.unwrap();
        got += page
            .entries
            .iter()
            .filter(|e| matches!(e.event, xinge_client::api::Event::Message { .. }))
            .count();
        after = page.entries.last().map_or(after, |e| e.seq);
        if !page.has_more {
            break;
        }
    }
    assert_eq!(got, n);
    server.stop().await;
}

#[tokio::test]
async fn the_route_service_rate_limits_connection_admission_per_ip() {
    let server = start(|c| {
        c.route.per_ip_burst = 3.0;
        c.route.per_ip_per_sec = 1.0;
    })
    .await;
    let url = format!("{}/v1/route", server.base);
    for _ in 0..3 {
        let r = reqwest::get(&url).await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = reqwest::get(&url).await.unwrap();
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "retry after {retry}s");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["code"], "rate_limited");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_user_is_rate_limited_and_nobody_else_is() {
    let clock = xinge_core::clock::Clock::default();
    let server = start(|c| {
        c.clock = clock.clone();
        c.limits.sends_burst = 5.0;
        c.limits.sends_per_sec = 1.0;
        c.limits.pulls_burst = 3.0;
        c.limits.pulls_per_sec = 1.0;
    })
    .await;
    let (alice, a) = server.login("alice", "laptop").await;
    let (bob, b) = server.login("bob", "laptop").await;
    befriend(&alice, a, &bob, b).await;
    let send = |to, i: usize| SendRequest {
        to: Some(to),
        client_msg_id: format!("m{i}"),
        content: serde_json::json!({}),
        ..Default::default()
    };
    for i in 0..5 {
        assert_eq!(code(alice.send(&send(b, i)).await), "ok");
    }
    // Over HTTP: 429 with a retry-after.
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/messages", server.base))
        .bearer_auth(alice.token().unwrap())
        .json(&send(b, 5))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().contains_key("retry-after"));
    // Over the long connection: the same stable code.
    let (conn, _signals) = Connection::connect(
        Transport::Tcp,
        &server.tcp.to_string(),
        alice.token().unwrap(),
    )
    .await
    .unwrap();
    let r: Result<serde_json::Value, _> = conn.request(cmd::SEND, &send(b, 6)).await;
    assert_eq!(code(r), "rate_limited");
    // Bob is not held back by Alice's flood.
    assert_eq!(code(bob.send(&send(a, 0)).await), "ok");
    // A retry of an accepted send once the bucket has refilled (the server's clock moved
    // on by two tokens' time) is answered as the original.
    clock.advance(std::time::Duration::from_secs(2));
    let again = alice.send(&send(b, 0)).await.unwrap();
    assert!(again.duplicate);
    // Pulls have their own limit.
    for _ in 0..3 {
        assert_eq!(code(bob.sync(0, None).await), "ok");
    }
    assert_eq!(code(bob.sync(0, None).await), "rate_limited");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_http_clients_are_cut_off_and_http_connections_are_bounded() {
    let server = start(|c| {
        c.server.header_timeout_secs = 1;
        c.server.max_http_connections = 2;
    })
    .await;
    let addr = server.base.trim_start_matches("http://").to_owned();
    // Two slowloris clients take both connection slots: half a request's headers, then
    // nothing more (one of them as a WebSocket upgrade that never completes).
    let mut slow = Vec::new();
    for head in [
        "GET /healthz HTTP/1.1\r\nHost: x\r\n",
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n",
    ] {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        slow.push(s);
    }
    let started = std::time::Instant::now();
    // A third client waits for a slot: it is served only once the server has cut the
    // slow ones off at the header deadline.
    let third = tokio::spawn({
        let url = format!("{}/healthz", server.base);
        async move { reqwest::get(url).await.map(|r| r.status().as_u16()) }
    });
    for s in &mut slow {
        let mut buf = [0u8; 1024];
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {} // a 408 before closing is fine too
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "the server closed a slowloris connection");
    }
    let status = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("the third client is served once a slot frees")
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "the third client waited for a slot ({:?})",
        started.elapsed()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_pings_fragments_and_close_follow_rfc_6455() {
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::protocol::frame::Frame as WsFrame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
    let server = start(|_| {}).await;
    let (alice, _) = server.login("alice", "laptop").await;
    let url = format!("{}?token={}", server.ws, alice.token().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let _greeting = ws.next().await.unwrap().unwrap();

    // A ping is answered with a pong that carries its payload.
    ws.send(Message::Ping(Bytes::from_static(b"hi")))
        .await
        .unwrap();
    match ws.next().await.unwrap().unwrap() {
        Message::Pong(p) => assert_eq!(&p[..], b"hi"),
        other => panic!("expected a pong, got {other:?}"),
    }

    // A message in two fragments is one frame.
    let ping = Frame::request(cmd::PING, 7, Bytes::new()).encode();
    let first = WsFrame::message(ping.slice(..3), OpCode::Data(Data::Binary), false);
    let rest = WsFrame::message(ping.slice(3..), OpCode::Data(Data::Continue), true);
    ws.send(Message::Frame(first)).await.unwrap();
    ws.send(Message::Frame(rest)).await.unwrap();
    match ws.next().await.unwrap().unwrap() {
        Message::Binary(b) => {
            let f = Frame::decode(b, usize::MAX).unwrap();
            assert!(f.is_response() && f.req_id == 7, "{f:?}");
        }
        other => panic!("expected the answer to the ping, got {other:?}"),
    }

    // A close frame is answered with the same code, and the stream ends.
    ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    })))
    .await
    .unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        let mut code = None;
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Close(c) = m {
                code = c.map(|c| c.code);
            }
        }
        code
    })
    .await
    .expect("the server ends the connection");
    assert_eq!(closed, Some(CloseCode::Normal));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_rate_limits_new_connections_per_ip_on_both_transports() {
    let server = start(|c| {
        c.gateway.admission.per_ip_burst = 3.0;
        c.gateway.admission.per_ip_per_sec = 0.5;
    })
    .await;
    let (alice, _) = server.login("alice", "laptop").await;
    let token = alice.token().unwrap().to_owned();
    let mut admitted = Vec::new();
    for _ in 0..3 {
        admitted.push(raw_authed(&server, &token).await);
    }
    // The fourth TCP connection from this IP is told why, and when to come back.
    let mut s = raw_tcp(&server).await;
    let (close, _) = read_until_closed(&mut s).await;
    let close = close.expect("a close frame");
    assert_eq!(close.code.as_str(), "rate_limited");
    let wait = close.retry_after_ms.expect("a retry-after");
    assert!((1..=2_000).contains(&wait), "retry after {wait} ms");
    // The SDK, which sends AUTH at once, reads the same refusal.
    match Connection::connect(Transport::Tcp, &server.tcp.to_string(), &token).await {
        Err(xinge_client::ClientError::Api(e)) => {
            assert_eq!(e.code.as_str(), "rate_limited");
            assert!(e.retry_after_ms.is_some());
        }
        other => panic!("expected rate_limited, got {:?}", other.map(|_| ())),
    }
    // A WebSocket upgrade is refused before it costs anything: 429 with Retry-After.
    let ws = format!("ws://{}/ws", server.base.trim_start_matches("http://"));
    match tokio_tungstenite::connect_async(&ws).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 429);
            assert!(resp.headers().contains_key("retry-after"));
            let body: ApiError = serde_json::from_slice(resp.body().as_deref().unwrap()).unwrap();
            assert_eq!(body.code.as_str(), "rate_limited");
        }
        other => panic!("expected 429, got {other:?}"),
    }
    // The connections already admitted are untouched.
    for s in &mut admitted {
        let f = request(s, Frame::request(cmd::PING, 7, Bytes::new())).await;
        assert!(f.is_response() && !f.is_error());
    }
    // The SDK, refused the same way, waits as told and then gets in.
    let started = std::time::Instant::now();
    let dev = server.device(&alice, Transport::Ws);
    assert!(dev.wait_connected(Duration::from_secs(10)).await);
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "it waited for a token"
    );
    dev.stop();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_signals_to_one_user_is_coalesced_and_nothing_is_lost() {
    let server = start(|c| {
        c.limits.signals_per_sec = 10.0;
        c.limits.signals_burst = 10.0;
    })
    .await;
    let (alice, a) = server.login("alice", "laptop").await;
    let (bob, b) = server.login("bob", "laptop").await;
    let (carol, c) = server.login("carol", "laptop").await;
    befriend(&alice, a, &bob, b).await;
    befriend(&alice, a, &carol, c).await;
    // Bob's phone counts the signals it gets; his laptop (the SDK) must end up with every
    // message, in order, with no periodic pull to help it: only the signals.
    let (bob_phone, mut bob_signals) = {
        let (phone, _) = server.login("bob", "phone").await;
        Connection::connect(
            Transport::Tcp,
            &server.tcp.to_string(),
            phone.token().unwrap(),
        )
        .await
        .unwrap()
    };
    let laptop = Device::start(
        bob.clone(),
        DeviceOptions {
            messages: true,
            repair_interval: Duration::from_secs(600),
            ..Default::default()
        },
    );
    assert!(laptop.wait_connected(Duration::from_secs(10)).await);
    const N: usize = 300;
    let send = |to, i: usize| SendRequest {
        to: Some(to),
        client_msg_id: format!("f{i}"),
        content: serde_json::json!({ "i": i }),
        ..Default::default()
    };
    for chunk in (0..N).collect::<Vec<_>>().chunks(50) {
        let reqs: Vec<_> = chunk.iter().map(|&i| send(b, i)).collect();
        let sends = reqs.iter().map(|r| alice.send(r));
        for r in futures_util::future::join_all(sends).await {
            r.unwrap();
        }
    }
    // Carol is not held back by Bob's flood: her signal comes at once.
    let (_carol_conn, mut carol_signals) = Connection::connect(
        Transport::Tcp,
        &server.tcp.to_string(),
        carol.token().unwrap(),
    )
    .await
    .unwrap();
    alice.send(&send(c, N)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(2), carol_signals.recv())
        .await
        .expect("carol's signal is not throttled by bob's")
        .unwrap();
    // Every message reaches the laptop exactly once and in order (sends in a chunk were
    // concurrent, so the order is the conversation's, not `i`).
    let mut ids = std::collections::HashSet::new();
    for seq in 1..=N as u64 {
        let m = laptop
            .next_message(Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("message {seq} never arrived"));
        assert_eq!(m.conv_seq, seq, "in order, exactly once");
        assert!(ids.insert(m.client_msg_id));
    }
    assert!(
        laptop
            .next_message(Duration::from_millis(300))
            .await
            .is_none()
    );
    // The phone got far fewer signals than messages, and the last one names the head.
    let head = bob.sync(0, Some(1)).await.unwrap().head;
    let mut signals = 0;
    let mut last_seq = 0;
    while let Ok(Some(s)) =
        tokio::time::timeout(Duration::from_millis(500), bob_signals.recv()).await
    {
        if let xinge_client::api::Signal::Inbox { seq, .. } = s {
            signals += 1;
            last_seq = last_seq.max(seq);
        }
    }
    assert!(signals < N / 3, "{signals} signals for {N} messages");
    assert_eq!(last_seq, head, "the newest signal is never coalesced away");
    drop(bob_phone);
    laptop.stop();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_past_the_frame_rate_is_slowed_by_not_being_read() {
    let server = start(|c| {
        c.gateway.frames_per_sec = 50.0;
        c.gateway.frames_burst = 50.0;
    })
    .await;
    let (alice, _) = server.login("alice", "laptop").await;
    let (bob, _) = server.login("bob", "laptop").await;
    let mut s = raw_authed(&server, alice.token().unwrap()).await;
    // 500 pings at once: the burst is answered, then 50 a second — no errors, no close.
    let mut burst = BytesMut::new();
    for i in 0..500 {
        Frame::request(cmd::PING, 10 + i, Bytes::new()).encode_prefixed_into(&mut burst);
    }
    s.write_all(&burst).await.unwrap();
    let started = std::time::Instant::now();
    let mut answered = 0u32;
    while started.elapsed() < Duration::from_secs(2) {
        let Ok(len) = tokio::time::timeout(Duration::from_millis(200), s.read_u32()).await else {
            continue;
        };
        let mut buf = vec![0; len.unwrap() as usize];
        s.read_exact(&mut buf).await.unwrap();
        let f = Frame::decode(Bytes::from(buf), usize::MAX).unwrap();
        assert!(f.is_response() && !f.is_error() && f.cmd == cmd::PING);
        answered += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    assert!(answered >= 50, "the burst is served: {answered}");
    assert!(
        f64::from(answered) <= 50.0 + 50.0 * secs + 10.0,
        "{answered} answers in {secs:.1} s is past 50/s after a burst of 50"
    );
    // Bob, meanwhile, is not slowed.
    let mut b = raw_authed(&server, bob.token().unwrap()).await;
    let t = std::time::Instant::now();
    let f = request(&mut b, Frame::request(cmd::PING, 1, Bytes::new())).await;
    assert!(f.is_response() && !f.is_error());
    assert!(t.elapsed() < Duration::from_millis(500));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_is_told_of_an_unknown_protocol_a_stray_response_and_any_case_of_bearer() {
    let server = start(|_| {}).await;
    let (alice, _) = server.login("alice", "laptop").await;
    let token = alice.token().unwrap().to_owned();

    // AUTH naming a protocol this server does not speak is refused, not taken as 1.
    let mut s = raw_tcp(&server).await;
    let body = serde_json::to_vec(&serde_json::json!({ "token": token, "protocol": 2 })).unwrap();
    s.write_all(&Frame::request(cmd::AUTH, 1, body).encode_prefixed())
        .await
        .unwrap();
    let (close, frames) = read_until_closed(&mut s).await;
    let said = close.or_else(|| frames.iter().find(|f| f.is_error()).map(err_of));
    assert_eq!(said.unwrap().code.as_str(), "unsupported_protocol");
    // Protocol 1, said or left out, is accepted (raw_authed leaves it out).
    let mut s = raw_tcp(&server).await;
    let body = serde_json::to_vec(&serde_json::json!({ "token": token, "protocol": 1 })).unwrap();
    let ok = request(&mut s, Frame::request(cmd::AUTH, 1, body)).await;
    assert!(ok.is_response() && !ok.is_error());

    // A frame with the response flag set gets an error in its place; the connection lives.
    let mut s = raw_authed(&server, &token).await;
    let stray = Frame::request(cmd::PING, 5, Bytes::new()).reply(Bytes::new());
    let f = request(&mut s, stray).await;
    assert_eq!((f.cmd, f.req_id), (cmd::PING, 5));
    assert_eq!(err_of(&f).code.as_str(), "bad_request");
    let f = request(&mut s, Frame::request(cmd::PING, 6, Bytes::new())).await;
    assert!(f.is_response() && !f.is_error() && f.req_id == 6);

    // The Authorization scheme is case-insensitive.
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let r = reqwest::Client::new()
            .get(format!("{}/v1/me", server.base))
            .header("authorization", format!("{scheme} {token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{scheme}");
    }
    server.stop().await;
}
