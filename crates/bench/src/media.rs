//! `bench media`: what media costs the server. Four phases on one spawned server:
//! 1. uploads: `files` files of `size_mb` MB, distinct bytes, `concurrency` at once, by the
//!    SDK's resumable upload (8 MiB chunks, each with its SHA-256 checksum) — MB/s and
//!    server CPU per MB;
//! 2. downloads: those files fetched whole through signed URLs by `concurrency` tasks for
//!    `download_secs` — MB/s and server CPU per MB (filesystem backend);
//! 3. thumbnails: `thumbs` uploads of a 12-megapixel JPEG (4000 × 3000), each decoded and
//!    thumbnailed by the server — thumbnails per second;
//! 4. 1:1 text at `rate` for `duration_secs`, once alone and once while a task uploads
//!    10 MB files back to back — the latency the uploads cost the messages.

use crate::report::{BenchResult, Percentiles};
use crate::server::Server;
use crate::traffic::Load;
use crate::{BenchError, setup, traffic, workers};
use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use xinge_client::Transport;

/// The TOML the spawned server needs: no quota (the phases upload gigabytes), and the
/// uploads' pace (MiB/s; 0: unpaced, the server's default when not given).
pub fn config(p: &Params) -> String {
    let pace = p.pace_mib.map_or(String::new(), |p| {
        format!("upload_bytes_per_sec = {}\n", p << 20)
    });
    let dirs = p.media_dir.as_deref().map_or(String::new(), |d| {
        format!(
            "dir = {:?}\nstaging_dir = {:?}\n",
            d.join("blobs").display().to_string(),
            d.join("uploads").display().to_string()
        )
    });
    format!("[media]\nquota_bytes = 0\nmax_upload_bytes = 1073741824\n{pace}{dirs}")
}

const CHUNK: usize = 8 << 20;

#[derive(clap::Args, Clone, Debug)]
pub struct Params {
    #[arg(long, default_value_t = 20)]
    pub files: usize,
    #[arg(long, default_value_t = 10)]
    pub size_mb: u64,
    /// Uploads (and downloads) at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    #[arg(long, default_value_t = 10)]
    pub download_secs: u64,
    /// Uploads of a 12-megapixel JPEG.
    #[arg(long, default_value_t = 10)]
    pub thumbs: usize,
    /// The text phase: users in pairs, offered messages per second, seconds each run.
    #[arg(long, default_value_t = 1_000)]
    pub users: usize,
    #[arg(long, default_value_t = 5_000)]
    pub rate: u64,
    #[arg(long, default_value_t = 20)]
    pub duration_secs: u64,
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// The server's `media.upload_bytes_per_sec` in MiB/s (0: unpaced); its default
    /// when not given.
    #[arg(long)]
    pub pace_mib: Option<u64>,
    /// The server's blobs and staged uploads in this directory (e.g. on another disk)
    /// instead of under its data directory.
    #[arg(long)]
    pub media_dir: Option<std::path::PathBuf>,
}

impl Params {
    /// The pace the server runs with, in MiB/s.
    fn pace(&self) -> u64 {
        self.pace_mib
            .unwrap_or(xinge_core::config::MediaConfig::default().upload_bytes_per_sec >> 20)
    }
}

fn failed(what: &str) -> impl Fn(xinge_client::ClientError) -> BenchError + '_ {
    move |e| BenchError::Setup(format!("{what}: {e}"))
}

/// Pseudo-random bytes, distinct per `seed` (so no two files share a blob).
fn noise(len: usize, seed: u64) -> Bytes {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

/// A 12-megapixel JPEG, as a phone takes (a gradient with noise, so it does not compress
/// to nothing).
fn photo() -> Result<Vec<u8>, BenchError> {
    use image::ImageEncoder;
    let (w, h) = (4000u32, 3000u32);
    let noise = noise((w * h) as usize, 7);
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        let n = noise[(y * w + x) as usize] / 8;
        image::Rgb([(x / 16) as u8 ^ n, (y / 12) as u8, ((x + y) / 28) as u8 ^ n])
    });
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85)
        .write_image(img.as_raw(), w, h, image::ExtendedColorType::Rgb8)
        .map_err(|e| BenchError::Setup(format!("making the photo: {e}")))?;
    Ok(out)
}

/// Server CPU (µs) since `from`.
fn cpu_since(srv: &Server, from: u64) -> u64 {
    srv.sample().map_or(0, |s| s.cpu_us.saturating_sub(from))
}

fn cpu_now(srv: &Server) -> u64 {
    srv.sample().map_or(0, |s| s.cpu_us)
}

pub async fn run(
    srv: &Server,
    transport: Transport,
    p: Params,
    workers_n: usize,
) -> Result<BenchResult, BenchError> {
    let (_, owners) = setup::users(&srv.base, p.concurrency.max(1)).await?;
    let owners = Arc::new(owners);
    let mb = p.size_mb.max(1) as usize * (1 << 20);

    // 1. Uploads.
    eprintln!(
        "media: uploading {} files of {} MB, {} at once",
        p.files, p.size_mb, p.concurrency
    );
    let (cpu0, t0) = (cpu_now(srv), Instant::now());
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..p.concurrency.max(1) {
        let (owners, next, files) = (owners.clone(), next.clone(), p.files as u64);
        tasks.push(tokio::spawn(async move {
            let mut done = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= files {
                    return Ok::<_, BenchError>(done);
                }
                let http = &owners[w].http;
                let m = http
                    .upload(noise(mb, i + 1), &[("filename", "bench.bin")], CHUNK)
                    .await
                    .map_err(failed("upload"))?;
                done.push((w, m.id));
            }
        }));
    }
    let mut uploaded = Vec::new();
    for t in tasks {
        uploaded.extend(t.await.map_err(|e| BenchError::Setup(e.to_string()))??);
    }
    let up_secs = t0.elapsed().as_secs_f64();
    let up_cpu = cpu_since(srv, cpu0);
    let up_mb = (p.files * mb) as f64 / (1 << 20) as f64;
    eprintln!(
        "media: uploads {:.0} MB/s, server CPU {:.0} µs per MB",
        up_mb / up_secs,
        up_cpu as f64 / up_mb
    );

    // 2. Downloads.
    let mut urls = Vec::new();
    for (w, id) in &uploaded {
        let u = owners[*w]
            .http
            .media_url(id, "original", None)
            .await
            .map_err(failed("download url"))?;
        urls.push((*w, u.url));
    }
    let urls = Arc::new(urls);
    let stop = Arc::new(AtomicBool::new(false));
    let bytes = Arc::new(AtomicU64::new(0));
    let (cpu0, t0) = (cpu_now(srv), Instant::now());
    let mut tasks = Vec::new();
    for w in 0..p.concurrency.max(1) {
        let (owners, urls, stop, bytes) =
            (owners.clone(), urls.clone(), stop.clone(), bytes.clone());
        tasks.push(tokio::spawn(async move {
            let mut k = w;
            while !stop.load(Ordering::Relaxed) {
                let (o, url) = &urls[k % urls.len()];
                let got = owners[*o].http.download(url, None).await;
                let got = got.map_err(failed("download"))?;
                bytes.fetch_add(got.len() as u64, Ordering::Relaxed);
                k += p.concurrency.max(1);
            }
            Ok::<_, BenchError>(())
        }));
    }
    tokio::time::sleep(Duration::from_secs(p.download_secs.max(1))).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.map_err(|e| BenchError::Setup(e.to_string()))??;
    }
    let down_secs = t0.elapsed().as_secs_f64();
    let down_cpu = cpu_since(srv, cpu0);
    let down_mb = bytes.load(Ordering::Relaxed) as f64 / (1 << 20) as f64;
    eprintln!(
        "media: downloads {:.0} MB/s, server CPU {:.0} µs per MB",
        down_mb / down_secs,
        down_cpu as f64 / down_mb.max(1.0)
    );

    // 3. Thumbnails of 12-megapixel photos.
    let photo = Bytes::from(photo()?);
    eprintln!(
        "media: {} uploads of a {:.1} MB 12-megapixel JPEG",
        p.thumbs,
        photo.len() as f64 / 1e6
    );
    let (cpu0, t0) = (cpu_now(srv), Instant::now());
    for i in 0..p.thumbs {
        let m = owners[i % owners.len()]
            .http
            .upload(photo.clone(), &[("filename", "photo.jpg")], CHUNK)
            .await
            .map_err(failed("photo upload"))?;
        if !m.thumb {
            return Err(BenchError::Setup("a photo got no thumbnail".into()));
        }
    }
    let thumb_secs = t0.elapsed().as_secs_f64();
    let thumb_cpu = cpu_since(srv, cpu0);
    eprintln!(
        "media: {:.1} photos/s uploaded and thumbnailed one after another, server CPU {:.0} ms each",
        p.thumbs as f64 / thumb_secs,
        thumb_cpu as f64 / 1000.0 / p.thumbs.max(1) as f64
    );

    // 4. Text alone, then with 10 MB uploads alongside.
    let load = Load {
        rate: p.rate,
        secs: p.duration_secs,
        size: p.size,
    };
    let n = p.users.max(2) & !1;
    let (run_a, alone_users) = setup::users(&srv.base, n).await?;
    setup::pair_up(&alone_users).await?;
    eprintln!("media: 1:1 text at {}/s alone", p.rate);
    let plan = traffic::Plan::direct(&alone_users);
    let alone = workers::drive(srv, transport, &alone_users, plan, &run_a, load, workers_n).await?;
    let (run_b, users) = setup::users(&srv.base, n).await?;
    setup::pair_up(&users).await?;
    eprintln!(
        "media: 1:1 text at {}/s with 10 MB uploads back to back",
        p.rate
    );
    let stop = Arc::new(AtomicBool::new(false));
    let alongside = {
        let (owners, stop) = (owners.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let file = noise(10 << 20, 1_000_000 + n);
                owners[0]
                    .http
                    .upload(file, &[("filename", "side.bin")], CHUNK)
                    .await
                    .map_err(failed("upload alongside"))?;
                n += 1;
            }
            Ok::<_, BenchError>(n)
        })
    };
    let plan = traffic::Plan::direct(&users);
    let mut r = workers::drive(srv, transport, &users, plan, &run_b, load, workers_n).await?;
    stop.store(true, Ordering::Relaxed);
    let side = alongside
        .await
        .map_err(|e| BenchError::Setup(e.to_string()))??;
    eprintln!(
        "media: text p99 {} µs alone, {} µs with {side} uploads of 10 MB alongside ({:.0} MB/s)",
        alone.delivery_latency.p99_us,
        r.delivery_latency.p99_us,
        (side * 10) as f64 / p.duration_secs.max(1) as f64
    );
    r.scenario = "media".into();
    r.direct_alone_latency = Some(Percentiles::clone(&alone.delivery_latency));
    r.param("files", p.files as u64);
    r.param("size_mb", p.size_mb);
    r.param("concurrency", p.concurrency as u64);
    r.param("upload_mb_per_s", (up_mb / up_secs) as u64);
    r.param("upload_cpu_us_per_mb", (up_cpu as f64 / up_mb) as u64);
    r.param("download_mb_per_s", (down_mb / down_secs) as u64);
    r.param(
        "download_cpu_us_per_mb",
        (down_cpu as f64 / down_mb.max(1.0)) as u64,
    );
    r.param("thumbs", p.thumbs as u64);
    r.param(
        "thumbs_per_s_x100",
        (p.thumbs as f64 / thumb_secs * 100.0) as u64,
    );
    r.param("thumb_cpu_us_each", thumb_cpu / p.thumbs.max(1) as u64);
    r.param("uploads_alongside", side);
    r.param("pace_mib", p.pace());
    Ok(r)
}
