//! The S3 backend passes the same suite as the filesystem, against a real S3 server
//! process: moto's, started by `scripts/s3-fake.sh`, which checks request signatures
//! against its own IAM like S3 (so a request the backend signed wrongly fails here too).
//! Without Python's packages the test says it is skipped — except on CI (`CI=1`), where it
//! fails.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use xinge_core::config::S3Config;
use xinge_media::BlobStore;
use xinge_media::s3::S3Blobs;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn on_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// The stand-in, stopped when dropped.
struct Fake {
    dir: PathBuf,
    env: HashMap<String, String>,
}

impl Fake {
    fn start() -> Result<Self, String> {
        let dir = repo_root().join("target/s3-fake-media-test");
        let out = Command::new("bash")
            .arg(repo_root().join("scripts/s3-fake.sh"))
            .env("S3_FAKE_DIR", &dir)
            .current_dir(repo_root())
            .output()
            .map_err(|e| format!("running scripts/s3-fake.sh: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "scripts/s3-fake.sh failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let env = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| {
                (
                    k.trim().to_owned(),
                    v.trim().trim_matches(['\'', '"']).to_owned(),
                )
            })
            .collect();
        Ok(Self { dir, env })
    }

    fn settings(&self, prefix: &str) -> S3Config {
        S3Config {
            endpoint: Some(self.env["S3_ENDPOINT"].clone()),
            bucket: self.env["S3_BUCKET"].clone(),
            region: self.env["S3_REGION"].clone(),
            access_key_id: Some(self.env["S3_ACCESS_KEY_ID"].clone()),
            secret_access_key: Some(self.env["S3_SECRET_ACCESS_KEY"].clone()),
            prefix: prefix.into(),
            allow_http: true,
        }
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(repo_root().join("scripts/s3-fake.sh"))
            .arg("stop")
            .env("S3_FAKE_DIR", &self.dir)
            .current_dir(repo_root())
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_s3_backend_passes_the_blob_suite_against_a_real_s3_server() {
    let fake = match Fake::start() {
        Ok(f) => f,
        Err(why) => {
            assert!(!on_ci(), "{why}: required on CI");
            eprintln!(
                "SKIPPED the_s3_backend_passes_the_blob_suite_against_a_real_s3_server: {why}"
            );
            return;
        }
    };
    let blobs = S3Blobs::new(&fake.settings("suite")).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    xinge_media::blob::suite::run(&blobs, scratch.path()).await;

    // A blob larger than one PUT goes up in parts, and reads back by any range.
    let big: Vec<u8> = (0..20_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    let hash = xinge_media::hex(ring_sha256(&big).as_slice());
    let staged = scratch.path().join("big");
    std::fs::write(&staged, &big).unwrap();
    assert!(blobs.put_file(&hash, &staged).await.unwrap());
    assert_eq!(blobs.len(&hash).await.unwrap(), Some(big.len() as u64));
    std::fs::write(&staged, &big).unwrap();
    assert!(
        !blobs.put_file(&hash, &staged).await.unwrap(),
        "stored once"
    );
    use futures_util::TryStreamExt;
    let part: Vec<bytes::Bytes> = blobs
        .read(&hash, 8_388_000..8_389_000)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(part.concat(), &big[8_388_000..8_389_000]);
    blobs.delete(&hash).await.unwrap();

    // Wrong credentials are refused by the server: the signature is checked.
    let mut wrong = fake.settings("suite");
    wrong.secret_access_key = Some("not-the-secret".into());
    let wrong = S3Blobs::new(&wrong).unwrap();
    assert!(wrong.len(&hash).await.is_err());
}

fn ring_sha256(b: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, b)
        .as_ref()
        .to_vec()
}
