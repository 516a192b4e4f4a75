//! `flood`: does abuse raise everyone else's latency? 1:1 traffic alone, then the same 1:1
//! traffic while
//! - `flooders` users each send to a friend as fast as their connection lets them (up to
//!   32 sends in flight), far past the per-user send limit, and
//! - one source address (127.0.0.99) opens connections as fast as it can
//!   (`connection_flood` at once), each trying to authenticate with a bad token.
//!
//! The server runs with its default limits (spawned by the bench: not raised as for the
//! other scenarios), except that gateway admission per IP admits the bench's own users,
//! who all come from 127.0.0.1. The figure is the ratio of the 1:1 p99 with the flood to
//! the p99 without; the target is at most 2.

use crate::report::BenchResult;
use crate::server::Server;
use crate::traffic::{self, Load, Plan};
use crate::{BenchError, setup};
use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use xinge_client::api::SendRequest;
use xinge_client::{Connection, Transport};
use xinge_core::ErrorCode;
use xinge_proto::{Frame, cmd};

/// What the abusers got.
#[derive(Default)]
struct Tally {
    sends_ok: AtomicU64,
    sends_limited: AtomicU64,
    sends_other: AtomicU64,
    conns_refused: AtomicU64,
    conns_unauthenticated: AtomicU64,
    conns_other: AtomicU64,
}

/// In flight per flooding user, and connection attempts at once from the flooding address.
const IN_FLIGHT: usize = 32;
const FLOOD_SOURCE: [u8; 4] = [127, 0, 0, 99];

pub struct Args {
    pub users: usize,
    pub rate: u64,
    pub secs: u64,
    pub size: usize,
    pub flooders: usize,
    /// Connection attempts at once from the flooding address (0: none).
    pub connection_flood: usize,
}

pub async fn run(srv: &Server, transport: Transport, a: Args) -> Result<BenchResult, BenchError> {
    let n = a.users.max(2) & !1;
    let f = a.flooders * 2;
    eprintln!(
        "flood: creating {n} users in pairs and {} flooding pairs",
        f / 2
    );
    let (run_id, pairs) = setup::users(&srv.base, n).await?;
    setup::pair_up(&pairs).await?;
    let (_, abusers) = setup::users(&srv.base, f).await?;
    if f > 0 {
        setup::pair_up(&abusers).await?;
    }
    let load = Load {
        rate: a.rate,
        secs: a.secs,
        size: a.size,
    };
    eprintln!("flood: 1:1 alone");
    let alone = traffic::run(
        srv,
        transport,
        &pairs,
        Plan::direct(&pairs),
        &format!("{run_id}a"),
        load,
    )
    .await?;

    eprintln!("flood: 1:1 while {} users and one address flood", f / 2);
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut abuse = tokio::task::JoinSet::new();
    for pair in abusers.chunks_exact(2) {
        let token = pair[0].http.token().unwrap_or_default().to_owned();
        let (conn, _signals) = Connection::connect(Transport::Tcp, &srv.tcp, &token)
            .await
            .map_err(|e| BenchError::Setup(format!("connect: {e}")))?;
        let (conn, to) = (Arc::new(conn), pair[1].id);
        for lane in 0..IN_FLIGHT {
            let (conn, tally, stop) = (conn.clone(), tally.clone(), stop.clone());
            abuse.spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let req = SendRequest {
                        to: Some(to),
                        client_msg_id: format!("flood-{lane}-{i}"),
                        content: serde_json::json!({ "spam": i }),
                        ..Default::default()
                    };
                    let r: Result<serde_json::Value, _> = conn.request(cmd::SEND, &req).await;
                    let counter = match r {
                        Ok(_) => &tally.sends_ok,
                        Err(xinge_client::ClientError::Api(e))
                            if e.code == ErrorCode::RateLimited =>
                        {
                            &tally.sends_limited
                        }
                        Err(_) => &tally.sends_other,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    }
    let gateway: SocketAddr = srv
        .tcp
        .parse()
        .map_err(|e| BenchError::Setup(format!("gateway address: {e}")))?;
    for _ in 0..a.connection_flood {
        let (tally, stop) = (tally.clone(), stop.clone());
        abuse.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let counter = match bad_connection(gateway).await {
                    Some(ErrorCode::RateLimited) => &tally.conns_refused,
                    Some(ErrorCode::Unauthenticated) => &tally.conns_unauthenticated,
                    _ => {
                        // Out of ports or the like: do not spin.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        &tally.conns_other
                    }
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let cpu0 = srv.sample();
    let with = traffic::run(
        srv,
        transport,
        &pairs,
        Plan::direct(&pairs),
        &format!("{run_id}b"),
        load,
    )
    .await;
    let cpu1 = srv.sample();
    stop.store(true, Ordering::Relaxed);
    while abuse.join_next().await.is_some() {}
    let with = with?;

    let mut r = with;
    r.scenario = "flood".into();
    for (k, v) in [
        ("users", n as u64),
        ("rate", a.rate),
        ("duration_secs", a.secs),
        ("size", a.size as u64),
        ("flooders", (f / 2) as u64),
        ("connection_flood", a.connection_flood as u64),
    ] {
        r.param(k, v);
    }
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    for (k, v) in [
        ("flood_sends_accepted", get(&tally.sends_ok)),
        ("flood_sends_rate_limited", get(&tally.sends_limited)),
        ("flood_sends_other_errors", get(&tally.sends_other)),
        (
            "flood_conns_refused_by_admission",
            get(&tally.conns_refused),
        ),
        (
            "flood_conns_admitted_then_unauthenticated",
            get(&tally.conns_unauthenticated),
        ),
        ("flood_conns_other", get(&tally.conns_other)),
    ] {
        r.param(k, v);
    }
    r.send_errors += alone.send_errors;
    r.checks.lost += alone.checks.lost;
    r.checks.duplicated += alone.checks.duplicated;
    r.checks.out_of_order += alone.checks.out_of_order;
    r.direct_alone_latency = Some(alone.delivery_latency.clone());
    if let (Some(a), Some(b)) = (cpu0, cpu1) {
        // Everything the server did meanwhile, the abuse included, per 1:1 delivery.
        r.server_cpu_us = b.cpu_us - a.cpu_us;
        r.server_cpu_us_per_msg = r.server_cpu_us as f64 / r.delivered.max(1) as f64;
    }
    let ratio = r.delivery_latency.p99_us as f64 / alone.delivery_latency.p99_us.max(1) as f64;
    eprintln!(
        "flood: 1:1 p99 {:.2} ms alone, {:.2} ms under the flood: ×{ratio:.2}",
        alone.delivery_latency.p99_us as f64 / 1000.0,
        r.delivery_latency.p99_us as f64 / 1000.0
    );
    r.param("p99_ratio_x100", (ratio * 100.0).round() as u64);
    Ok(r)
}

/// One abusive connection from the flooding address: connect, authenticate with a bad
/// token, read the server's answer. The error code it was refused with.
async fn bad_connection(gateway: SocketAddr) -> Option<ErrorCode> {
    let sock = tokio::net::TcpSocket::new_v4().ok()?;
    sock.bind(SocketAddr::from((FLOOD_SOURCE, 0))).ok()?;
    let mut s = sock.connect(gateway).await.ok()?;
    let auth = Frame::request(cmd::AUTH, 1, Bytes::from_static(br#"{"token":"forged"}"#));
    let _ = s.write_all(&auth.encode_prefixed()).await;
    let read = async {
        // The answer to AUTH (if admitted), then CLOSE: the last frame's code is the verdict.
        let mut code = None;
        loop {
            let Ok(len) = s.read_u32().await else {
                return code;
            };
            let mut buf = vec![0; len as usize];
            s.read_exact(&mut buf).await.ok()?;
            let f = Frame::decode(Bytes::from(buf), usize::MAX).ok()?;
            if let Ok(e) = serde_json::from_slice::<xinge_core::error::ApiError>(&f.body) {
                code = Some(e.code);
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .ok()
        .flatten()
}
