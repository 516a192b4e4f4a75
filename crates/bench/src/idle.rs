//! `idle`: N authenticated connections, held without traffic. The figure is the growth
//! of the server's resident memory divided by N. TCP clients are raw sockets spread over
//! 127.0.0.x source addresses and hold no task of their own, so the bench itself stays
//! small; WebSocket clients use the SDK's connection.

use crate::report::BenchResult;
use crate::server::Server;
use crate::{BenchError, setup};
use bytes::Bytes;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use xinge_client::Transport;
use xinge_proto::{Frame, cmd};

async fn raw_tcp(addr: SocketAddr, source: Ipv4Addr, token: &str) -> std::io::Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::from((source, 0)))?;
    let mut s = sock.connect(addr).await?;
    let body = serde_json::to_vec(&serde_json::json!({ "token": token }))?;
    s.write_all(&Frame::request(cmd::AUTH, 1, body).encode_prefixed())
        .await?;
    let len = s.read_u32().await? as usize;
    let mut buf = vec![0; len.min(1 << 20)];
    s.read_exact(&mut buf).await?;
    let f = Frame::decode(Bytes::from(buf), 1 << 20).map_err(std::io::Error::other)?;
    if f.is_error() {
        return Err(std::io::Error::other(
            String::from_utf8_lossy(&f.body).into_owned(),
        ));
    }
    Ok(s)
}

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

/// A WebSocket authenticated at the upgrade (`?token=`), from a chosen source address;
/// returns once the server's greeting arrived.
async fn raw_ws(addr: SocketAddr, url: &str, source: Ipv4Addr, token: &str) -> Result<Ws, String> {
    use futures_util::StreamExt;
    let sock = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    sock.bind(SocketAddr::from((source, 0)))
        .map_err(|e| e.to_string())?;
    let stream = sock.connect(addr).await.map_err(|e| e.to_string())?;
    let (mut ws, _) = tokio_tungstenite::client_async(format!("{url}?token={token}"), stream)
        .await
        .map_err(|e| e.to_string())?;
    match ws.next().await {
        Some(Ok(tokio_tungstenite::tungstenite::Message::Binary(b))) => {
            let f = Frame::decode(b, 1 << 20).map_err(|e| e.to_string())?;
            if f.is_error() || f.cmd != cmd::AUTH {
                return Err(String::from_utf8_lossy(&f.body).into_owned());
            }
            Ok(ws)
        }
        other => Err(format!("no greeting: {other:?}")),
    }
}

enum Held {
    Tcp(#[allow(dead_code)] TcpStream),
    Ws(#[allow(dead_code)] Box<Ws>),
}

pub async fn run(
    srv: &mut Server,
    cpus: Option<&str>,
    transport: Transport,
    n: usize,
    hold_secs: u64,
) -> Result<BenchResult, BenchError> {
    eprintln!("idle: creating {n} users");
    let (_, users) = setup::users(&srv.base, n).await?;
    srv.restart(cpus).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = srv.sample();
    let tcp: SocketAddr = srv
        .tcp
        .parse()
        .map_err(|e| BenchError::Setup(format!("tcp address: {e}")))?;
    let tcp_of_ws: SocketAddr = srv
        .base
        .trim_start_matches("http://")
        .parse()
        .map_err(|e| BenchError::Setup(format!("http address: {e}")))?;
    let bar = indicatif::ProgressBar::new(n as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} {bar:40} {pos}/{len} {per_sec}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message("connecting");
    let started = Instant::now();
    let mut held = Vec::with_capacity(n);
    // Connect in waves of 256 so the accept queue never overflows.
    for (wave, chunk) in users.chunks(256).enumerate() {
        let mut tasks = tokio::task::JoinSet::new();
        for (j, u) in chunk.iter().enumerate() {
            let token = u.http.token().unwrap_or_default().to_owned();
            let i = wave * 256 + j;
            let source = Ipv4Addr::new(127, 0, (i / 250 % 250) as u8 + 1, (i % 250) as u8 + 2);
            let ws = srv.ws.clone();
            tasks.spawn(async move {
                match transport {
                    Transport::Tcp => raw_tcp(tcp, source, &token)
                        .await
                        .map(Held::Tcp)
                        .map_err(|e| e.to_string()),
                    Transport::Ws => raw_ws(tcp_of_ws, &ws, source, &token)
                        .await
                        .map(|w| Held::Ws(Box::new(w))),
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            let h = r
                .map_err(|e| BenchError::Setup(e.to_string()))?
                .map_err(BenchError::Setup)?;
            held.push(h);
            bar.inc(1);
        }
    }
    let connect_secs = started.elapsed().as_secs_f64();
    bar.set_message("holding");
    tokio::time::sleep(Duration::from_secs(hold_secs)).await;
    bar.finish_and_clear();
    let after = srv.sample();
    let route = xinge_client::Http::new(&srv.base).route().await.ok();
    let reported = route
        .and_then(|r| r.gateways.first().map(|g| g.connections))
        .unwrap_or(0);
    let mut r = BenchResult::new("idle", transport);
    r.param("connections", n as u64);
    r.param("hold_secs", hold_secs);
    r.connections = held.len() as u64;
    r.connect_per_s = held.len() as f64 / connect_secs;
    r.gateway_reported_connections = reported;
    if let (Some(b), Some(a)) = (before, after) {
        r.server_rss_before = b.rss_bytes;
        r.server_rss_after = a.rss_bytes;
        r.rss_per_connection = a.rss_bytes.saturating_sub(b.rss_bytes) as f64 / n.max(1) as f64;
    }
    drop(held);
    Ok(r)
}
