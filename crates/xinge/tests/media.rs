//! Media end to end over real sockets: tus uploads (the protocol's answers, resumption
//! after a server or a client kill -9), images looked at safely, media messages, and who may
//! download what through signed URLs.

#![allow(clippy::unwrap_used)]

mod common;

use bytes::Bytes;
use common::{PASSWORD, befriend, code, start};
use image::ImageEncoder;
use sha2::Digest;
use std::time::Duration;
use xinge_client::api::{MessageBody, SendRequest};
use xinge_client::{Http, Upload};
use xinge_core::ConvId;

/// A PNG of `w` × `h` with a text chunk (metadata the server strips).
fn png_with_text(w: u32, h: u32) -> (Vec<u8>, Vec<u8>) {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 99])
    });
    let mut plain = Vec::new();
    image::codecs::png::PngEncoder::new(&mut plain)
        .write_image(img.as_raw(), w, h, image::ExtendedColorType::Rgb8)
        .unwrap();
    let text = b"tEXtComment\0taken at 52.52N 13.40E";
    let mut chunk = (text.len() as u32 - 4).to_be_bytes().to_vec();
    chunk.extend_from_slice(text);
    chunk.extend_from_slice(&crc32(text).to_be_bytes());
    let with = [&plain[..33], &chunk, &plain[33..]].concat();
    (with, plain)
}

/// PNG's chunk CRC, for building test files.
fn crc32(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in bytes {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 == 1 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// This process's resident memory (the server runs in it), in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn sha(b: &[u8]) -> String {
    format!("{:x}", sha2::Sha256::digest(b))
}

/// Files under the server's blob directory.
fn blob_files(dir: &std::path::Path) -> Vec<String> {
    let root = dir.join("media/blobs");
    let mut out = Vec::new();
    for d in std::fs::read_dir(root).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(d.path()).into_iter().flatten().flatten() {
            out.push(f.file_name().to_string_lossy().into_owned());
        }
    }
    out.sort();
    out
}

/// Resumes `up` from the server's offset with the rest of `bytes`; the media downloaded
/// again must be `bytes` (by hash).
async fn resume_to_the_end(http: &Http, up: &Upload, bytes: &[u8]) {
    let media = http
        .resume_upload(up, Bytes::copy_from_slice(bytes), 1 << 20)
        .await
        .unwrap();
    assert_eq!(media.size, bytes.len() as u64);
    let url = http.media_url(&media.id, "original", None).await.unwrap();
    let got = http.download(&url.url, None).await.unwrap();
    assert_eq!(sha(&got), sha(bytes));
}

fn raw(http: &Http) -> (reqwest::Client, String, String) {
    (
        reqwest::Client::new(),
        http.base().to_owned(),
        format!("Bearer {}", http.token().unwrap()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tus_answers_as_the_protocol_says() {
    let server = start(|_| {}).await;
    let (alice, _) = server.login("alice", "laptop").await;
    let (c, base, auth) = raw(&alice);

    // OPTIONS needs no token and lists what is supported.
    let r = c
        .request(reqwest::Method::OPTIONS, format!("{base}/v1/uploads"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["tus-version"], "1.0.0");
    let ext = r.headers()["tus-extension"].to_str().unwrap();
    for e in [
        "creation",
        "creation-with-upload",
        "checksum",
        "expiration",
        "termination",
    ] {
        assert!(ext.split(',').any(|x| x == e), "{e} in {ext}");
    }

    // Without Tus-Resumable: 412 and the version spoken.
    let r = c
        .post(format!("{base}/v1/uploads"))
        .header("authorization", &auth)
        .header("upload-length", "10")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 412);
    assert_eq!(r.headers()["tus-version"], "1.0.0");
    // Without a token: 401.
    let r = c
        .post(format!("{base}/v1/uploads"))
        .header("tus-resumable", "1.0.0")
        .header("upload-length", "10")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // Creation with upload: the first bytes come with the POST.
    let r = c
        .post(format!("{base}/v1/uploads"))
        .header("authorization", &auth)
        .header("tus-resumable", "1.0.0")
        .header("upload-length", "10")
        .header("upload-metadata", "filename bm90ZXMudHh0")
        .header("content-type", "application/offset+octet-stream")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["upload-offset"], "5");
    assert!(r.headers().contains_key("upload-expires"));
    let path = r.headers()["location"].to_str().unwrap().to_owned();
    let patch = |offset: &str, body: &'static str, sum: Option<String>| {
        let mut req = c
            .patch(format!("{base}{path}"))
            .header("authorization", &auth)
            .header("tus-resumable", "1.0.0")
            .header("upload-offset", offset)
            .header("content-type", "application/offset+octet-stream");
        if let Some(s) = sum {
            req = req.header("upload-checksum", s);
        }
        req.body(body).send()
    };
    // The wrong offset: 409, nothing kept.
    assert_eq!(patch("3", "xx", None).await.unwrap().status(), 409);
    // A checksum that does not match: 460, nothing kept.
    let r = patch(
        "5",
        "world",
        Some("sha256 AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into()),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 460);
    // Past the length: 413, nothing kept.
    assert_eq!(patch("5", "world!", None).await.unwrap().status(), 413);
    // HEAD still says 5.
    let head = c
        .head(format!("{base}{path}"))
        .header("authorization", &auth)
        .header("tus-resumable", "1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["upload-offset"], "5");
    assert_eq!(head.headers()["upload-length"], "10");
    assert_eq!(head.headers()["cache-control"], "no-store");
    // Another user cannot see it.
    let (bob, _) = server.login("bob", "laptop").await;
    let up = Upload {
        path: path.clone(),
        length: 10,
    };
    assert!(bob.upload_offset(&up).await.is_err());
    // The right bytes and checksum finish it: the answer names the media.
    use base64::Engine;
    let sum = base64::engine::general_purpose::STANDARD.encode(sha1_of(b"world"));
    let r = patch("5", "world", Some(format!("sha1 {sum}")))
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["upload-offset"], "10");
    let media_id = r.headers()["xinge-media-id"].to_str().unwrap().to_owned();
    let st = alice.upload_status(&up).await.unwrap();
    let media = st.media.unwrap();
    assert_eq!(
        (
            media.id.as_str(),
            media.kind.as_str(),
            media.mime.as_str(),
            media.size
        ),
        (media_id.as_str(), "file", "text/plain", 10)
    );
    assert_eq!(media.name.as_deref(), Some("notes.txt"));

    // Termination: gone, and 404 from then on.
    let up2 = alice.create_upload(100, &[]).await.unwrap();
    alice.cancel_upload(&up2).await.unwrap();
    assert!(alice.upload_offset(&up2).await.is_err());
    assert_eq!(code(alice.upload_status(&up2).await), "not_found");
    server.stop().await;
}

fn sha1_of(b: &[u8]) -> Vec<u8> {
    // The test's own SHA-1 (the server checks with ring's): a tiny one-shot.
    let mut h: [u32; 5] = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0];
    let mut msg = b.to_vec();
    let bits = (b.len() as u64) * 8;
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bits.to_be_bytes());
    for block in msg.chunks(64) {
        let mut w = [0u32; 80];
        for i in 0..16 {
            w[i] = u32::from_be_bytes(block[i * 4..i * 4 + 4].try_into().unwrap());
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b2, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b2 & c) | (!b2 & d), 0x5A827999),
                20..=39 => (b2 ^ c ^ d, 0x6ED9EBA1),
                40..=59 => ((b2 & c) | (b2 & d) | (c & d), 0x8F1BBCDC),
                _ => (b2 ^ c ^ d, 0xCA62C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            e = d;
            d = c;
            c = b2.rotate_left(30);
            b2 = a;
            a = t;
        }
        for (x, y) in h.iter_mut().zip([a, b2, c, d, e]) {
            *x = x.wrapping_add(y);
        }
    }
    h.iter().flat_map(|x| x.to_be_bytes()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_photo_in_a_chat_is_seen_by_the_peer_and_nobody_else() {
    let clock = xinge_core::clock::Clock::default();
    let server = start(|c| {
        c.clock = clock.clone();
        // The URL's expiry is passed before the recall.
        c.chat.recall_window_secs = 3600;
    })
    .await;
    let (alice, a) = server.login("alice", "laptop").await;
    let (bob, b) = server.login("bob", "laptop").await;
    let (carol, _) = server.login("carol", "laptop").await;
    befriend(&alice, a, &bob, b).await;

    let (with_text, plain) = png_with_text(800, 600);
    let photo = alice
        .upload(
            Bytes::from(with_text.clone()),
            &[("filename", "cat.png")],
            4096,
        )
        .await
        .unwrap();
    assert_eq!(
        (
            photo.kind.as_str(),
            photo.mime.as_str(),
            photo.width,
            photo.height,
            photo.thumb
        ),
        ("image", "image/png", Some(800), Some(600), true)
    );
    assert_eq!(photo.size, plain.len() as u64, "the text chunk is stripped");

    let conv = ConvId::direct(a, b);
    let sent = alice
        .send(&SendRequest {
            to: Some(b),
            conv: None,
            client_msg_id: "photo-1".into(),
            content: serde_json::json!({"media": photo.id, "text": "look"}),
            mentions: vec![],
            mention_all: false,
        })
        .await
        .unwrap();
    let seq = sent.conv_seq;
    // Bob's history carries the media as the server described it.
    let hist = bob.history(conv, None, None, 10).await.unwrap();
    let msg = hist.messages.iter().find(|m| m.conv_seq == seq).unwrap();
    let MessageBody::Content { content } = &msg.body else {
        panic!("{msg:?}")
    };
    assert_eq!(content["text"], "look");
    assert_eq!(content["media"]["id"], photo.id.as_str());
    assert_eq!(content["media"]["width"], 800);

    // Bob downloads the thumbnail and the original through signed URLs.
    let from = Some((conv, seq));
    assert_eq!(bob.media(&photo.id, from).await.unwrap(), photo);
    let thumb_url = bob.media_url(&photo.id, "thumb", from).await.unwrap();
    let thumb = bob.download(&thumb_url.url, None).await.unwrap();
    let t = image::load_from_memory(&thumb).unwrap();
    assert_eq!((t.width(), t.height()), (320, 240));
    let url = bob.media_url(&photo.id, "original", from).await.unwrap();
    let got = bob.download(&url.url, None).await.unwrap();
    assert_eq!(
        sha(&got),
        sha(&plain),
        "byte-identical, without the metadata"
    );
    assert!(!got.windows(6).any(|w| w == b"52.52N"));
    // A range.
    let part = bob.download(&url.url, Some(100..200)).await.unwrap();
    assert_eq!(&part[..], &plain[100..200]);
    // The headers a browser needs.
    let r = reqwest::get(format!("{}{}", server.base, url.url))
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "image/png");
    assert_eq!(r.headers()["accept-ranges"], "bytes");
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert!(
        r.headers()["cache-control"]
            .to_str()
            .unwrap()
            .starts_with("private, max-age=")
    );

    // Carol: not in the conversation; not with the message named; not with Bob's URL
    // tampered; not with the uploader's own id alone.
    assert_eq!(code(carol.media(&photo.id, None).await), "not_found");
    assert_eq!(code(carol.media(&photo.id, from).await), "not_found");
    assert_eq!(
        code(carol.media_url(&photo.id, "original", from).await),
        "not_found"
    );
    assert_eq!(code(bob.media(&photo.id, None).await), "not_found");
    let forged = url.url.replace(&format!("u={b}"), "u=999");
    assert_eq!(code(carol.download(&forged, None).await), "forbidden");
    let mut bent = url.url.clone();
    let last = bent.pop().unwrap();
    bent.push(if last == '0' { '1' } else { '0' });
    assert_eq!(code(carol.download(&bent, None).await), "forbidden");
    // The id of someone else's media cannot be put in a message.
    let r = bob
        .send(&SendRequest {
            to: Some(a),
            conv: None,
            client_msg_id: "steal".into(),
            content: serde_json::json!({"media": photo.id}),
            mentions: vec![],
            mention_all: false,
        })
        .await;
    assert_eq!(code(r), "not_found");

    // The same bytes uploaded by Bob: a media of his own, one blob on disk for both.
    let before = blob_files(server.dir.path());
    let again = bob
        .upload(Bytes::from(plain.clone()), &[("kind", "file")], 1 << 20)
        .await
        .unwrap();
    assert_ne!(again.id, photo.id);
    assert_eq!(again.kind, "file");
    assert_eq!(blob_files(server.dir.path()), before, "stored once");
    assert_eq!(
        code(bob.media(&photo.id, None).await),
        "not_found",
        "no leak"
    );

    // A URL expires.
    clock.advance(Duration::from_secs(601));
    assert_eq!(code(bob.download(&url.url, None).await), "forbidden");
    let url = bob.media_url(&photo.id, "original", from).await.unwrap();
    assert!(bob.download(&url.url, None).await.is_ok());

    // A recall ends access at once, URLs already handed out included.
    alice
        .recall(&xinge_client::api::RecallRequest {
            conv,
            conv_seq: seq,
            client_msg_id: "recall-1".into(),
        })
        .await
        .unwrap();
    assert_eq!(code(bob.download(&url.url, None).await), "not_found");
    assert_eq!(
        code(bob.media_url(&photo.id, "thumb", from).await),
        "not_found"
    );
    // The uploader still has it.
    assert!(alice.media(&photo.id, None).await.is_ok());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bombs_quotas_and_kinds_are_refused_with_their_codes() {
    let server = start(|c| {
        c.media.quota_bytes = 300_000;
        c.media.max_image_bytes = 200_000;
    })
    .await;
    let (alice, _) = server.login("alice", "laptop").await;

    // A PNG header claiming 100,000 × 100,000 pixels (40 GB decoded): refused from the
    // header, nothing allocated.
    let (mut bomb, _) = png_with_text(1, 1);
    bomb[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    bomb[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    let crc = crc32(&bomb[12..29]);
    bomb[29..33].copy_from_slice(&crc.to_be_bytes());
    let rss_before = rss_kib();
    let r = alice.upload(Bytes::from(bomb), &[], 1 << 20).await;
    assert_eq!(code(r), "too_large");
    let grew = rss_kib().saturating_sub(rss_before);
    assert!(
        grew < 64 * 1024,
        "the server grew by {grew} KiB looking at a bomb"
    );
    // Something that says it is an image and is not.
    let r = alice
        .upload(
            Bytes::from_static(b"GIF89a\x01\x00\x01\x00 but not really"),
            &[("kind", "image")],
            1 << 20,
        )
        .await;
    assert_eq!(code(r), "unsupported_media");
    let r = alice
        .upload(
            Bytes::from_static(b"%PDF-1.4 not audio"),
            &[("kind", "voice")],
            1 << 20,
        )
        .await;
    assert_eq!(code(r), "unsupported_media");
    // An image over the image limit (it could go as a file).
    let big: Vec<u8> = [&b"\x89PNG\r\n\x1a\n"[..], &vec![7; 250_000]].concat();
    let r = alice.upload(Bytes::from(big), &[], 1 << 20).await;
    assert_eq!(code(r), "too_large");
    // The quota: what is stored counts, a new upload past it is refused at creation.
    let file = vec![1u8; 200_000];
    alice.upload(Bytes::from(file), &[], 1 << 20).await.unwrap();
    assert_eq!(
        code(alice.create_upload(150_000, &[]).await),
        "quota_exceeded"
    );
    // Larger than any upload may be.
    assert_eq!(code(alice.create_upload(1 << 40, &[]).await), "too_large");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_media_frees_its_blob_only_when_nobody_else_shares_it() {
    let server = start(|c| {
        c.media.blob_grace_secs = 0;
        c.media.gc_every_secs = 1;
    })
    .await;
    let (alice, _) = server.login("alice", "laptop").await;
    let (bob, _) = server.login("bob", "laptop").await;
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i * 13 % 256) as u8).collect();
    let hash = sha(&bytes);
    let a = alice
        .upload(Bytes::from(bytes.clone()), &[], 1 << 20)
        .await
        .unwrap();
    let b = bob.upload(Bytes::from(bytes), &[], 1 << 20).await.unwrap();
    assert_eq!(blob_files(server.dir.path()), vec![hash.clone()]);
    assert_eq!(code(bob.delete_media(&a.id).await), "not_found", "not his");
    alice.delete_media(&a.id).await.unwrap();
    assert_eq!(code(alice.media(&a.id, None).await), "not_found");
    // Rounds of collection pass; Bob's reference keeps the blob.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(blob_files(server.dir.path()), vec![hash.clone()]);
    let url = bob.media_url(&b.id, "original", None).await.unwrap();
    assert_eq!(bob.download(&url.url, None).await.unwrap().len(), 300_000);
    // The last reference goes: so does the blob.
    bob.delete_media(&b.id).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !blob_files(server.dir.path()).is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "blob not collected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_resumes_after_the_server_is_killed_and_ends_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::test_config(dir.path());
    let mut p1 = common::procs::serve(dir.path(), &cfg, "127.0.0.1:0", "127.0.0.1:0");
    let base = format!("http://{}", p1.http);
    let anon = Http::new(&base);
    anon.register("alice", PASSWORD).await.unwrap();
    let (alice, _) = anon.login("alice", PASSWORD, "laptop").await.unwrap();
    let bytes: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let up = alice
        .create_upload(bytes.len() as u64, &[("filename", "big.bin")])
        .await
        .unwrap();
    let mut at = 0;
    for _ in 0..3 {
        at = alice
            .upload_chunk_checked(
                &up,
                at,
                Bytes::copy_from_slice(&bytes[at as usize..at as usize + 500_000]),
            )
            .await
            .unwrap();
    }
    assert_eq!(at, 1_500_000);
    p1.kill9();

    let p2 = common::procs::serve(dir.path(), &cfg, &p1.http, "127.0.0.1:0");
    let alice = alice
        .at(format!("http://{}", p2.http))
        .with_token(alice.token().unwrap());
    assert_eq!(alice.upload_offset(&up).await.unwrap(), 1_500_000);
    // The running hash is rebuilt from the staged bytes; the rest comes in one go.
    resume_to_the_end(&alice, &up, &bytes).await;
    // The blob is named by the hash of the whole: the hash kept across the kill is right.
    assert_eq!(blob_files(&dir.path().join("data")), vec![sha(&bytes)]);
    drop(p2);
}

/// The client, not the server, dies: curl (a process of its own, an independent HTTP
/// client) streams a PATCH slowly and is killed with SIGKILL in the middle of the body. The
/// server keeps what arrived, and a new client resumes from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_resumes_after_its_client_is_killed_mid_request_and_ends_byte_identical() {
    let server = start(|_| {}).await;
    let (alice, _) = server.login("alice", "laptop").await;
    let bytes: Vec<u8> = (0..2_000_000u32)
        .map(|i| (i.wrapping_mul(2246822519) >> 11) as u8)
        .collect();
    let up = alice
        .create_upload(bytes.len() as u64, &[("filename", "killed.bin")])
        .await
        .unwrap();
    let file = server.dir.path().join("killed.bin");
    std::fs::write(&file, &bytes).unwrap();
    let mut curl = std::process::Command::new("curl")
        .args(["-sS", "-X", "PATCH", "--limit-rate", "200k"])
        .args(["-H", "Expect:"])
        .args(["-H", "Tus-Resumable: 1.0.0", "-H", "Upload-Offset: 0"])
        .args(["-H", "Content-Type: application/offset+octet-stream"])
        .arg("-H")
        .arg(format!("Authorization: Bearer {}", alice.token().unwrap()))
        .arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .arg(format!("{}{}", server.base, up.path))
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("curl is needed for this test");
    // About 300 KB of the 2 MB are on their way when the client dies.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(curl.try_wait().unwrap().is_none(), "curl still uploading");
    curl.kill().unwrap(); // SIGKILL
    curl.wait().unwrap();
    // The server sees the connection end, keeps the bytes that arrived and says where to
    // go on from.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let at = loop {
        let at = alice.upload_offset(&up).await.unwrap();
        if at > 0 {
            break at;
        }
        assert!(tokio::time::Instant::now() < deadline, "nothing kept");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(at < bytes.len() as u64, "the kill came mid-body: {at}");

    // A new client (a fresh SDK handle) resumes from the server's offset.
    let again = Http::new(&server.base).with_token(alice.token().unwrap());
    resume_to_the_end(&again, &up, &bytes).await;
    assert_eq!(blob_files(server.dir.path()), vec![sha(&bytes)]);
    server.stop().await;
}

/// Bytes the server does not have (staged by another api process with a directory of its
/// own, or lost with a disk): the upload is not found there, as tus clients expect of an
/// upload they should start again, and not an internal error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_whose_bytes_are_elsewhere_is_not_found_and_a_new_one_succeeds() {
    let server = start(|_| {}).await;
    let (alice, _) = server.login("alice", "laptop").await;
    let bytes = Bytes::from(vec![7u8; 300_000]);
    let up = alice
        .create_upload(bytes.len() as u64, &[("filename", "gone.bin")])
        .await
        .unwrap();
    alice
        .upload_chunk(&up, 0, bytes.slice(..100_000))
        .await
        .unwrap();
    let id = up.path.rsplit('/').next().unwrap();
    std::fs::remove_file(server.dir.path().join("media/uploads").join(id)).unwrap();
    let (client, base, auth) = raw(&alice);
    let head = client
        .head(format!("{base}{}", up.path))
        .header("Authorization", auth)
        .header("Tus-Resumable", "1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 404);
    assert_eq!(
        code(
            alice
                .upload_chunk(&up, 100_000, bytes.slice(100_000..))
                .await
        ),
        "not_found"
    );
    let media = alice.upload(bytes.clone(), &[], 1 << 20).await.unwrap();
    assert_eq!(media.size, bytes.len() as u64);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_deleted_by_the_admin_api_takes_its_media_away_at_once() {
    let server = start(common::with_admin).await;
    let (alice, a) = server.login("alice", "laptop").await;
    let (bob, b) = server.login("bob", "laptop").await;
    befriend(&alice, a, &bob, b).await;
    let file = alice
        .upload(
            Bytes::from_static(b"minutes of the meeting"),
            &[("filename", "m.txt")],
            1 << 20,
        )
        .await
        .unwrap();
    let sent = alice
        .send(&SendRequest {
            to: Some(b),
            conv: None,
            client_msg_id: "f1".into(),
            content: serde_json::json!({"media": file.id}),
            mentions: vec![],
            mention_all: false,
        })
        .await
        .unwrap();
    let from = Some((sent.conv, sent.conv_seq));
    let url = bob.media_url(&file.id, "original", from).await.unwrap();
    let r = reqwest::get(format!("{}{}", server.base, url.url))
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "text/plain");
    assert!(
        r.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment;")
    );
    assert_eq!(&r.bytes().await.unwrap()[..], b"minutes of the meeting");

    let admin = server.admin.as_deref().unwrap();
    let r = reqwest::Client::new()
        .delete(format!(
            "{admin}/admin/v1/conversations/{}/messages/{}",
            sent.conv, sent.conv_seq
        ))
        .bearer_auth(common::ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(code(bob.download(&url.url, None).await), "not_found");
    assert_eq!(code(bob.media(&file.id, from).await), "not_found");
    server.stop().await;
}
