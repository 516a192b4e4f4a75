//! A burst of logins hashes at most one password per core at a time: it does not start a
//! blocking thread per login (tokio's pool would grow to 512 threads, each holding the
//! hash's memory, and they would all exit together later). Its own test binary, so that
//! the process's thread count is this test's alone.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use xinge_core::DeviceId;
use xinge_core::config::Config;
use xinge_logic::Logic;
use xinge_proto::api::{LoginRequest, RegisterRequest};
use xinge_push::{Push, PushConfig};
use xinge_store::fjall::{FjallOptions, FjallStore};

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, Iterator::count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_logins_hashes_one_password_per_core_at_a_time() {
    if threads() == 0 {
        eprintln!("no /proc/self/task here: nothing to count");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FjallStore::open(dir.path(), FjallOptions::default()).unwrap());
    let mut cfg = Config::default();
    // Slow enough that logins overlap, cheap enough for a debug build.
    cfg.auth.argon2_memory_kib = 1024;
    cfg.auth.argon2_iterations = 2;
    let logic = Logic::new(
        store,
        Arc::new(Push::new(PushConfig::default())),
        cfg,
        b"k".repeat(32),
    )
    .unwrap();
    logic
        .register(
            RegisterRequest {
                username: "burst".into(),
                password: "correct horse".into(),
                display_name: None,
            },
            None,
        )
        .await
        .unwrap();

    let before = threads();
    let peak = Arc::new(AtomicUsize::new(before));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(threads(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    let logins: Vec<_> = (0..32)
        .map(|i| {
            let logic = logic.clone();
            tokio::spawn(async move {
                logic
                    .login(
                        LoginRequest {
                            username: "burst".into(),
                            password: "correct horse".into(),
                            device: DeviceId::parse(&format!("d{i}")).unwrap(),
                        },
                        None,
                    )
                    .await
            })
        })
        .collect();
    for l in logins {
        assert!(
            l.await.unwrap().is_ok(),
            "every login in the burst succeeds"
        );
    }
    done.store(true, Ordering::Relaxed);
    sampler.await.unwrap();

    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let grew = peak.load(Ordering::Relaxed).saturating_sub(before);
    // One blocking thread per permit, give or take the hand-over: a thread that finished a
    // hash rejoins tokio's idle list only after its result is delivered, so the task that
    // takes the freed permit may start a new thread meanwhile (seen: 4 with 2 cores in a
    // full `cargo test --workspace`). Without the bound, 32 logins grow it by 31.
    assert!(
        grew <= 2 * cores + 1,
        "32 concurrent logins grew the process by {grew} threads ({cores} cores)"
    );
}
