//! SIGKILL in the middle of a send burst: every acknowledged message survives, sequences
//! continue without gap or reuse, and clients resume.

mod common;

use common::PASSWORD;
use common::procs::Proc;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use xinge_client::api::{Event, SendRequest, SendResponse};
use xinge_client::{Device, DeviceOptions, Http, Transport};
use xinge_core::ConvId;

/// `xinge serve` on `dir` (same dir, same store) at the given addresses.
fn spawn(dir: &std::path::Path, http: &str, tcp: &str) -> Proc {
    common::procs::serve(dir, &common::test_config(dir), http, tcp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_burst_loses_no_acknowledged_message_and_sequences_continue() {
    let dir = tempfile::tempdir().unwrap();
    let mut p1 = spawn(dir.path(), "127.0.0.1:0", "127.0.0.1:0");
    let base = format!("http://{}", p1.http);
    let anon = Http::new(&base);
    anon.register("alice", PASSWORD).await.unwrap();
    anon.register("bob", PASSWORD).await.unwrap();
    let (alice, la) = anon.login("alice", PASSWORD, "laptop").await.unwrap();
    let (bob, lb) = anon.login("bob", PASSWORD, "laptop").await.unwrap();
    let (a, b) = (la.user_id, lb.user_id);
    alice.request_friend(b, "").await.unwrap();
    bob.accept_friend(a).await.unwrap();
    let conv = ConvId::direct(a, b);
    let bob_dev = Device::start(
        bob.clone(),
        DeviceOptions {
            transport: Transport::Tcp,
            ..Default::default()
        },
    );
    assert!(bob_dev.wait_connected(Duration::from_secs(10)).await);

    // Four senders over HTTP, each sequential, until the server dies under them.
    let acked: Arc<Mutex<Vec<(String, SendResponse)>>> = Default::default();
    let in_flight: Arc<Mutex<Vec<String>>> = Default::default();
    let mut senders = Vec::new();
    for t in 0..4 {
        let (alice, acked, in_flight) = (alice.clone(), acked.clone(), in_flight.clone());
        senders.push(tokio::spawn(async move {
            for i in 0.. {
                let cmid = format!("t{t}-{i}");
                let req = SendRequest {
                    to: Some(b),
                    conv: None,
                    client_msg_id: cmid.clone(),
                    content: serde_json::json!({ "i": i }),
                    ..Default::default()
                };
                match alice.send(&req).await {
                    Ok(r) => acked.lock().unwrap().push((cmid, r)),
                    Err(_) => {
                        in_flight.lock().unwrap().push(cmid);
                        return;
                    }
                }
            }
        }));
    }
    while acked.lock().unwrap().len() < 200 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    p1.kill9();
    for s in senders {
        s.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let in_flight = in_flight.lock().unwrap().clone();
    assert!(acked.len() >= 200);

    // Same data dir, same ports: clients find the server where it was.
    let mut p2 = spawn(dir.path(), &p1.http, p1.tcp.as_deref().unwrap());
    let mut stored: HashMap<String, (u64, u64)> = HashMap::new();
    let mut after = 0;
    loop {
        let page = bob.history(conv, None, Some(after), 500).await.unwrap();
        for m in &page.messages {
            assert_eq!(m.conv_seq, after + 1, "conv_seq continues without gap");
            after = m.conv_seq;
            assert!(
                stored
                    .insert(m.client_msg_id.clone(), (m.msg_id.0, m.conv_seq))
                    .is_none(),
                "no duplicates"
            );
        }
        if !page.has_more {
            break;
        }
    }
    for (cmid, r) in &acked {
        assert_eq!(
            stored.get(cmid),
            Some(&(r.msg_id.0, r.conv_seq)),
            "acknowledged {cmid} survived as acknowledged"
        );
    }
    let head = after;

    // Retrying what was in flight: either it had committed (duplicate) or it is new now.
    let mut next = head;
    for cmid in &in_flight {
        let req = SendRequest {
            to: Some(b),
            conv: None,
            client_msg_id: cmid.clone(),
            content: serde_json::json!({}),
            ..Default::default()
        };
        let r = alice.send(&req).await.unwrap();
        match stored.get(cmid) {
            Some(&(id, seq)) => assert!(r.duplicate && r.msg_id.0 == id && r.conv_seq == seq),
            None => {
                next += 1;
                assert_eq!(
                    (r.duplicate, r.conv_seq),
                    (false, next),
                    "no reuse of a sequence"
                );
            }
        }
    }
    let fresh = alice
        .send(&SendRequest {
            to: Some(b),
            conv: None,
            client_msg_id: "after-restart".into(),
            content: serde_json::json!({}),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(fresh.conv_seq, next + 1);

    // Bob's device reconnected by itself and has every message exactly once, in order.
    let mut last = 0;
    let mut seen = 0;
    while seen < fresh.conv_seq {
        let e = bob_dev
            .next_event(Duration::from_secs(30))
            .await
            .expect("device resumes after restart");
        assert_eq!(e.seq, last + 1);
        last = e.seq;
        if let Event::Message { message } = e.event {
            seen += 1;
            assert_eq!(message.conv_seq, seen);
        }
    }
    assert!(bob_dev.connects() >= 2, "the device reconnected");
    let sync = bob.sync(0, Some(500)).await.unwrap();
    assert!(sync.entries.windows(2).all(|w| w[1].seq == w[0].seq + 1));
    p2.kill9();
}
