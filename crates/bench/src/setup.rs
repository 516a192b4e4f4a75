//! Users for a run: registered and logged in over the HTTP API, with bounded concurrency.

use crate::BenchError;
use std::sync::Arc;
use tokio::sync::Semaphore;
use xinge_client::Http;
use xinge_core::UserId;

pub struct BenchUser {
    pub id: UserId,
    pub http: Http,
}

const PASSWORD: &str = "bench-password";

/// Registers and logs in `n` users named after a random run id.
pub async fn users(base: &str, n: usize) -> Result<(String, Vec<BenchUser>), BenchError> {
    let run = run_stamp();
    let users = accounts(base, &run, n, true).await?;
    Ok((run, users))
}

/// A fresh 6-hex-digit id for a run.
pub fn run_stamp() -> String {
    format!("{:06x}", rand_u32() & 0xff_ffff)
}

/// Logs in again the `n` users an earlier run `run` registered.
pub async fn log_in(base: &str, run: &str, n: usize) -> Result<Vec<BenchUser>, BenchError> {
    accounts(base, run, n, false).await
}

async fn accounts(
    base: &str,
    run: &str,
    n: usize,
    register: bool,
) -> Result<Vec<BenchUser>, BenchError> {
    let limit = Arc::new(Semaphore::new(64));
    let mut tasks = tokio::task::JoinSet::new();
    // One HTTP client (one connection pool) for all users: a client per user would keep
    // a pooled connection per user open on the server.
    let shared = Http::new(base);
    for i in 0..n {
        let (limit, http, name) = (limit.clone(), shared.clone(), format!("b{run}x{i}"));
        tasks.spawn(async move {
            let _p = limit.acquire().await;
            if register {
                http.register(&name, PASSWORD).await?;
            }
            let (authed, login) = http.login(&name, PASSWORD, "bench").await?;
            Ok::<_, xinge_client::ClientError>((
                i,
                BenchUser {
                    id: login.user_id,
                    http: authed,
                },
            ))
        });
    }
    let mut out: Vec<Option<BenchUser>> = (0..n).map(|_| None).collect();
    while let Some(r) = tasks.join_next().await {
        let (i, u) = r
            .map_err(|e| BenchError::Setup(e.to_string()))?
            .map_err(|e| BenchError::Setup(e.to_string()))?;
        out[i] = Some(u);
    }
    Ok(out.into_iter().flatten().collect())
}

/// User `i` of run `run` (from [`users`]) logged in on another device, through `http`.
pub async fn login_device(
    http: &Http,
    run: &str,
    i: usize,
    device: &str,
) -> Result<Http, BenchError> {
    let (authed, _) = http
        .login(&format!("b{run}x{i}"), PASSWORD, device)
        .await
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    Ok(authed)
}

/// Makes users 2k and 2k+1 friends.
pub async fn pair_up(users: &[BenchUser]) -> Result<(), BenchError> {
    let limit = Arc::new(Semaphore::new(64));
    let mut tasks = tokio::task::JoinSet::new();
    for pair in users.chunks_exact(2) {
        let (a, b) = (pair[0].http.clone(), pair[1].http.clone());
        let (a_id, b_id) = (pair[0].id, pair[1].id);
        let limit = limit.clone();
        tasks.spawn(async move {
            let _p = limit.acquire().await;
            a.request_friend(b_id, "bench").await?;
            b.accept_friend(a_id).await
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.map_err(|e| BenchError::Setup(e.to_string()))?
            .map_err(|e| BenchError::Setup(e.to_string()))?;
    }
    Ok(())
}

fn rand_u32() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    nanos ^ std::process::id().rotate_left(16)
}

/// Creates a group owned by `owner` with `members` (added 999 at creation, then in batches
/// of 1,000) and returns its conversation.
pub async fn group(
    owner: &BenchUser,
    members: &[BenchUser],
) -> Result<xinge_core::ConvId, BenchError> {
    let err = |e: xinge_client::ClientError| BenchError::Setup(e.to_string());
    let ids: Vec<UserId> = members.iter().map(|m| m.id).collect();
    let first = ids.len().min(999);
    let g = owner
        .http
        .create_group("bench", &ids[..first])
        .await
        .map_err(err)?;
    for chunk in ids[first..].chunks(1000) {
        owner
            .http
            .add_members(g.group_id, chunk)
            .await
            .map_err(err)?;
    }
    Ok(g.conv)
}

/// Has the online members read up to different points of the group's newest message,
/// then times "who read it" (counts and the first page of each list) 20 times.
pub async fn time_read_state(
    users: &[BenchUser],
    conv: xinge_core::ConvId,
    online: usize,
) -> Result<crate::report::Percentiles, BenchError> {
    let err = |e: xinge_client::ClientError| BenchError::Setup(e.to_string());
    let owner = &users[0].http;
    let head = owner
        .history(conv, None, None, 1)
        .await
        .map_err(err)?
        .messages
        .last()
        .map_or(0, |m| m.conv_seq);
    for (k, u) in users[1..=online].iter().enumerate().step_by(2) {
        u.http
            .mark_read(conv, head.saturating_sub((k % 5) as u64))
            .await
            .map_err(err)?;
    }
    let mut h =
        hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
    for _ in 0..20 {
        let t = std::time::Instant::now();
        let st = owner
            .read_state_page(conv, head, None, 100)
            .await
            .map_err(err)?;
        let _ = h.record(t.elapsed().as_micros() as u64);
        if st.read_count + st.unread_count == 0 {
            return Err(BenchError::Failed("read-state counted nobody".into()));
        }
    }
    Ok(crate::report::Percentiles::of(&h))
}
