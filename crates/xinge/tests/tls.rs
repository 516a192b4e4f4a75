//! TLS on a real server over real sockets: HTTPS for the API, TLS over the TCP gateway and
//! `wss://` on the HTTP port; clients that do not speak TLS, never finish a handshake or
//! do not trust the certificate; certificates that cannot be loaded. The certificates are
//! made here, at test time (a CA and a server certificate for 127.0.0.1): no key is
//! committed.

// Test code, helpers outside `#[test]` functions included: a failed setup step should stop
// the test where it happened.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use xinge_client::api::{Event, MessageBody, SendRequest};
use xinge_client::{Connection, Device, DeviceOptions, Http, Tls, Transport};
use xinge_core::UserId;
use xinge_proto::{Frame, cmd};

const WAIT: Duration = Duration::from_secs(20);
/// The server's handshake deadline in these tests.
const HANDSHAKE_SECS: u64 = 2;

/// A CA made for one test, and a server certificate it signed, written as PEM files.
struct Pki {
    ca_pem: String,
    cert: PathBuf,
    key: PathBuf,
    _dir: tempfile::TempDir,
}

fn ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), Issuer::new(params, key))
}

fn pki() -> Pki {
    let (ca_pem, issuer) = ca("xinge test CA");
    let params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    Pki {
        ca_pem,
        cert: cert_path,
        key: key_path,
        _dir: dir,
    }
}

/// A server with TLS on both ports, and what a client needs to trust it.
struct TlsServer {
    server: Server,
    https: String,
    trust: Tls,
    _pki: Pki,
}

async fn start_tls() -> TlsServer {
    start_tls_with(|_| {}).await
}

async fn start_tls_with(tweak: impl FnOnce(&mut xinge_core::config::Config)) -> TlsServer {
    let pki = pki();
    let (cert, key) = (pki.cert.clone(), pki.key.clone());
    let server = start(move |cfg| {
        cfg.tls.cert = Some(cert);
        cfg.tls.key = Some(key);
        cfg.tls.handshake_timeout_secs = HANDSHAKE_SECS;
        tweak(cfg);
    })
    .await;
    TlsServer {
        https: server.base.replacen("http://", "https://", 1),
        trust: Tls::with_roots_pem(pki.ca_pem.as_bytes()).unwrap(),
        server,
        _pki: pki,
    }
}

impl TlsServer {
    fn http(&self) -> Http {
        Http::with_tls(&self.https, &self.trust).unwrap()
    }

    async fn login(&self, name: &str, device: &str) -> (Http, UserId) {
        let http = self.http();
        http.register(name, PASSWORD).await.unwrap();
        let (authed, resp) = http.login(name, PASSWORD, device).await.unwrap();
        (authed, resp.user_id)
    }

    fn device(&self, http: &Http, transport: Transport) -> Device {
        Device::start(
            http.clone(),
            DeviceOptions {
                transport,
                tls: Some(self.trust.clone()),
                ..DeviceOptions::default()
            },
        )
    }
}

fn text(to: UserId, cmid: &str, text: &str) -> SendRequest {
    SendRequest {
        to: Some(to),
        conv: None,
        client_msg_id: cmid.into(),
        content: serde_json::json!({ "text": text }),
        ..Default::default()
    }
}

async fn next_text(dev: &Device) -> String {
    loop {
        let e = dev.next_event(WAIT).await.expect("a message in time");
        if let Event::Message { message } = e.event
            && let MessageBody::Content { content } = message.body
        {
            return content["text"].as_str().unwrap_or_default().to_owned();
        }
    }
}

/// Reads until the server closes the connection (an end of stream, or a reset when it
/// closed with our bytes unread). Panics if it is still open after `limit`.
async fn closed_within(s: &mut TcpStream, limit: Duration) {
    let mut sink = Vec::new();
    let r = tokio::time::timeout(limit, s.read_to_end(&mut sink)).await;
    assert!(
        r.is_ok(),
        "the server kept the connection open past {limit:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_devices_chat_over_tls_tcp_and_wss_with_https_for_the_api() {
    let s = start_tls().await;
    let (alice, a) = s.login("alice", "laptop").await;
    let (bob, b) = s.login("bob", "phone").await;
    befriend(&alice, a, &bob, b).await;

    // The route service hands out the WebSocket gateway as wss://.
    let route = alice.route().await.unwrap();
    let ws = route.gateways.iter().find(|g| g.transport == "ws").unwrap();
    assert!(ws.address.starts_with("wss://"), "{}", ws.address);

    let a_dev = s.device(&alice, Transport::Tcp);
    let b_dev = s.device(&bob, Transport::Ws);
    assert!(a_dev.wait_connected(WAIT).await && b_dev.wait_connected(WAIT).await);

    for i in 0..20 {
        a_dev
            .send(&text(b, &format!("a-{i}"), &format!("over tls tcp {i}")))
            .await
            .unwrap();
        b_dev
            .send(&text(a, &format!("b-{i}"), &format!("over wss {i}")))
            .await
            .unwrap();
    }
    // A message over HTTPS reaches both long connections too.
    alice.send(&text(b, "https", "over https")).await.unwrap();

    let mut to_bob = Vec::new();
    let mut to_alice = Vec::new();
    // Each device sees every message of the conversation: its own sends come back as
    // inbox entries too.
    for _ in 0..41 {
        to_bob.push(next_text(&b_dev).await);
        to_alice.push(next_text(&a_dev).await);
    }
    assert_eq!(to_bob, to_alice, "both devices see one order");
    for i in 0..20 {
        assert!(to_bob.contains(&format!("over tls tcp {i}")));
        assert!(to_bob.contains(&format!("over wss {i}")));
    }
    assert!(to_bob.contains(&"over https".to_owned()));
    s.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_text_clients_on_tls_ports_are_refused_cleanly() {
    let s = start_tls().await;
    let (alice, _) = s.login("alice", "laptop").await;
    let token = alice.token().unwrap().to_owned();
    let tcp = s.server.tcp.to_string();
    let limit = Duration::from_secs(5);

    // The SDK without TLS: an error, not a hang.
    let r = tokio::time::timeout(limit, Connection::connect(Transport::Tcp, &tcp, &token)).await;
    assert!(matches!(r, Ok(Err(_))), "plain TCP on a TLS port must fail");
    let r = tokio::time::timeout(
        limit,
        Connection::connect(Transport::Ws, &s.server.ws, &token),
    )
    .await;
    assert!(matches!(r, Ok(Err(_))), "ws:// on a TLS port must fail");
    let r = tokio::time::timeout(limit, Http::new(&s.server.base).route()).await;
    assert!(matches!(r, Ok(Err(_))), "http:// on a TLS port must fail");

    // A raw AUTH frame where a ClientHello belongs: the server closes the connection.
    let mut raw = TcpStream::connect(&tcp).await.unwrap();
    let auth = serde_json::to_vec(&serde_json::json!({ "token": token })).unwrap();
    raw.write_all(&Frame::request(cmd::AUTH, 1, auth).encode_prefixed())
        .await
        .unwrap();
    closed_within(&mut raw, limit).await;
    // So does an HTTP request in the clear.
    let mut raw = TcpStream::connect(s.server.base.trim_start_matches("http://"))
        .await
        .unwrap();
    raw.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    closed_within(&mut raw, limit).await;

    // Nothing broke: TLS clients still get in on both ports.
    s.http().route().await.unwrap();
    let (conn, _signals) = Connection::connect_with(Transport::Tcp, &tcp, &token, Some(&s.trust))
        .await
        .unwrap();
    conn.ping().await.unwrap();
    s.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_the_handshake_is_cut_off_in_time() {
    let s = start_tls().await;
    let (alice, _) = s.login("alice", "laptop").await;
    let http_addr = s.server.base.trim_start_matches("http://").to_owned();
    let tcp_addr = s.server.tcp.to_string();
    // On each port: one that sends nothing, one that stops inside its ClientHello.
    let opened = Instant::now();
    let mut stalled = Vec::new();
    for addr in [&tcp_addr, &http_addr] {
        stalled.push(TcpStream::connect(addr).await.unwrap());
        let mut half = TcpStream::connect(addr).await.unwrap();
        // A handshake record header announcing 512 bytes that never come.
        half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
            .await
            .unwrap();
        stalled.push(half);
    }
    // Meanwhile the accept loops go on: TLS clients get in at once on both ports.
    let started = Instant::now();
    alice.me().await.unwrap();
    let (conn, _signals) = Connection::connect_with(
        Transport::Tcp,
        &tcp_addr,
        alice.token().unwrap(),
        Some(&s.trust),
    )
    .await
    .unwrap();
    conn.ping().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(HANDSHAKE_SECS),
        "stalled handshakes held up other clients"
    );
    // The stalled ones are closed by the deadline: when it passes, not much later.
    let deadline = Duration::from_secs(HANDSHAKE_SECS);
    for s in &mut stalled {
        closed_within(s, deadline + Duration::from_secs(4)).await;
        let took = opened.elapsed();
        println!("stalled handshake closed after {took:?}");
        assert!(took >= deadline - Duration::from_millis(200), "{took:?}");
    }
    s.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_trust_the_certificate_fails() {
    let s = start_tls().await;
    let (alice, _) = s.login("alice", "laptop").await;
    let token = alice.token().unwrap().to_owned();
    let (other_ca, _) = ca("some other CA");
    let wrong = Tls::with_roots_pem(other_ca.as_bytes()).unwrap();
    let is_cert_error = |e: &xinge_client::ClientError| {
        let e = format!("{e:?}").to_lowercase();
        println!("refused: {e}");
        e.contains("certificate") || e.contains("unknownissuer")
    };

    let e = Http::with_tls(&s.https, &wrong)
        .unwrap()
        .route()
        .await
        .unwrap_err();
    assert!(is_cert_error(&e), "{e:?}");
    let tcp = s.server.tcp.to_string();
    let e = Connection::connect_with(Transport::Tcp, &tcp, &token, Some(&wrong))
        .await
        .err()
        .unwrap();
    assert!(is_cert_error(&e), "{e:?}");
    let wss = s.server.ws.replacen("ws://", "wss://", 1);
    let e = Connection::connect_with(Transport::Ws, &wss, &token, Some(&wrong))
        .await
        .err()
        .unwrap();
    assert!(is_cert_error(&e), "{e:?}");
    // The right roots on the same addresses work.
    let (conn, _signals) = Connection::connect_with(Transport::Ws, &wss, &token, Some(&s.trust))
        .await
        .unwrap();
    conn.ping().await.unwrap();
    s.server.stop().await;
}

/// Gateway admission under TLS: a refused connection is closed before its handshake
/// (no CLOSE frame, which would need the handshake), the admitted ones are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_connection_refused_by_admission_is_closed_before_its_handshake() {
    let s = start_tls_with(|c| {
        c.gateway.admission.per_ip_burst = 2.0;
        c.gateway.admission.per_ip_per_sec = 0.01;
    })
    .await;
    let (alice, _) = s.login("alice", "laptop").await;
    let token = alice.token().unwrap().to_owned();
    let tcp = s.server.tcp.to_string();
    let connect = || Connection::connect_with(Transport::Tcp, &tcp, &token, Some(&s.trust));
    let (first, _s1) = connect().await.unwrap();
    let (second, _s2) = connect().await.unwrap();
    let refused = connect().await.err().unwrap();
    assert!(
        matches!(&refused, xinge_client::ClientError::Transport(m) if m.starts_with("tls:")),
        "{refused:?}"
    );
    first.ping().await.unwrap();
    second.ping().await.unwrap();
    s.server.stop().await;
}

fn tls_config(dir: &Path, cert: &Path, key: &Path) -> xinge_core::config::Config {
    let mut cfg = test_config(dir);
    cfg.tls.cert = Some(cert.to_owned());
    cfg.tls.key = Some(key.to_owned());
    cfg
}

/// What starting `xinge serve` and the gateway role with `cfg` says, if it fails.
async fn start_error(cfg: xinge_core::config::Config) -> (String, String) {
    let (_stop, rx) = tokio::sync::watch::channel(false);
    let listen = || async { TcpListener::bind("127.0.0.1:0").await.unwrap() };
    let serve = xinge::serve::run(
        cfg.clone(),
        listen().await,
        listen().await,
        rx.clone(),
        |_| panic!("started with a bad certificate"),
    );
    let serve = tokio::time::timeout(WAIT, serve)
        .await
        .unwrap()
        .unwrap_err();
    // The gateway role checks its certificate before it reaches for NATS or Redis.
    let role = xinge::roles::run_gateway(cfg, listen().await, listen().await, rx, |_| {
        panic!("started with a bad certificate")
    });
    let role = tokio::time::timeout(WAIT, role).await.unwrap().unwrap_err();
    (serve.to_string(), role.to_string())
}

#[tokio::test]
async fn a_certificate_that_cannot_be_loaded_stops_the_start_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki();
    let missing = dir.path().join("missing.pem");
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "this is not PEM\n").unwrap();

    let (serve, role) = start_error(tls_config(dir.path(), &missing, &pki.key)).await;
    for e in [serve, role] {
        assert!(
            e.contains("cannot read") && e.contains("missing.pem"),
            "{e}"
        );
    }
    let (serve, role) = start_error(tls_config(dir.path(), &pki.cert, &junk)).await;
    for e in [serve, role] {
        assert!(e.contains("junk.pem") && e.contains("PRIVATE KEY"), "{e}");
    }
    // A key that is not the certificate's.
    let other = dir.path().join("other-key.pem");
    std::fs::write(&other, KeyPair::generate().unwrap().serialize_pem()).unwrap();
    let (serve, _) = start_error(tls_config(dir.path(), &pki.cert, &other)).await;
    println!("{serve}");
    assert!(serve.contains("certificate and key"), "{serve}");

    // The binary says so and exits with a failure, without a panic.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_xinge"))
        .args([
            "serve",
            "--http-addr",
            "127.0.0.1:0",
            "--tcp-addr",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--tls-cert")
        .arg(&missing)
        .arg("--tls-key")
        .arg(&pki.key)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("missing.pem") && !stderr.contains("panicked"),
        "{stderr}"
    );
}

/// A `xinge serve` process of its own, killed when dropped.
struct Proc(std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    /// Starts the binary; its HTTP and TCP addresses from the ready line.
    fn spawn(config: &Path, data: &Path) -> (Self, String, String) {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_xinge"))
            .args([
                "serve",
                "--http-addr",
                "127.0.0.1:0",
                "--tcp-addr",
                "127.0.0.1:0",
            ])
            .arg("--config")
            .arg(config)
            .arg("--data-dir")
            .arg(data)
            .env("XINGE_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|p| p.strip_prefix(name))
                .expect("ready line")
                .to_owned()
        };
        let (http, tcp) = (field("http="), field("tcp="));
        (Self(child), http, tcp)
    }

    fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.0.id())).unwrap();
        let kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap();
        kb * 1024
    }
}

/// What an idle authenticated connection costs the server, in the clear and under TLS:
/// growth of a fresh server process's RSS over N connections, held 5 s. The server runs
/// as its own process (the binary this test builds; `--release` for release figures), the
/// clients are SDK connections in this one. `xinge bench idle` does the same for plain
/// connections at 19,000 with raw clients; it has no TLS. Not part of the normal run:
/// `cargo test -p xinge --test tls idle_connection_memory -- --ignored --nocapture`
/// (N from `XINGE_IDLE_N`, default 2,000).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn idle_connection_memory_plain_and_tls() {
    let n: usize = std::env::var("XINGE_IDLE_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let base = format!(
        "[auth]\nargon2_memory_kib = 256\nargon2_iterations = 1\ntoken_secret = \"{SECRET}\"\n\
         [route]\nper_ip_burst = 1000000.0\n"
    );
    let plain = dir.path().join("plain.toml");
    std::fs::write(&plain, &base).unwrap();
    let tls = dir.path().join("tls.toml");
    let tls_section = format!(
        "[tls]\ncert = {:?}\nkey = {:?}\n",
        pki.cert.display().to_string(),
        pki.key.display().to_string()
    );
    std::fs::write(&tls, format!("{base}{tls_section}")).unwrap();
    let trust = Tls::with_roots_pem(pki.ca_pem.as_bytes()).unwrap();

    // The users, once; each mode then starts a fresh process on the same data, so the
    // heap that registering them grew is not in the baseline.
    let tokens = {
        let (_server, http, _) = Proc::spawn(&plain, &data);
        let http = Http::new(format!("http://{http}"));
        let mut tokens = Vec::with_capacity(n);
        for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
            let mut logins = tokio::task::JoinSet::new();
            for &i in chunk {
                let http = http.clone();
                logins.spawn(async move {
                    let name = format!("idle{i}");
                    http.register(&name, PASSWORD).await.unwrap();
                    let (_, r) = http.login(&name, PASSWORD, "d").await.unwrap();
                    r.token
                });
            }
            while let Some(t) = logins.join_next().await {
                tokens.push(t.unwrap());
            }
        }
        tokens
    };
    for (mode, config) in [
        ("tcp", &plain),
        ("tls", &tls),
        ("ws", &plain),
        ("wss", &tls),
    ] {
        let (server, http, tcp) = Proc::spawn(config, &data);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = server.rss();
        let mut held = Vec::with_capacity(n);
        for chunk in tokens.chunks(200) {
            let mut connects = tokio::task::JoinSet::new();
            for token in chunk {
                let (token, trust) = (token.clone(), trust.clone());
                let (transport, address, tls) = match mode {
                    "tcp" => (Transport::Tcp, tcp.clone(), None),
                    "tls" => (Transport::Tcp, tcp.clone(), Some(trust)),
                    "ws" => (Transport::Ws, format!("ws://{http}/ws"), None),
                    _ => (Transport::Ws, format!("wss://{http}/ws"), Some(trust)),
                };
                connects.spawn(async move {
                    Connection::connect_with(transport, &address, &token, tls.as_ref())
                        .await
                        .unwrap()
                });
            }
            while let Some(c) = connects.join_next().await {
                held.push(c.unwrap());
            }
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        let after = server.rss();
        println!(
            "{mode}: {} connections, server RSS {before} -> {after}: {:.0} bytes per connection",
            held.len(),
            after.saturating_sub(before) as f64 / held.len() as f64
        );
    }
}
