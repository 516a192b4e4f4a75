//! Uploads in progress: one file per upload under the staging directory, appended at the
//! upload's durable offset. The SHA-256 of the whole upload is carried along as the bytes
//! stream in, so the finished upload is named without reading it again; the running hash
//! lives in memory and is rebuilt from the file when it is missing (after a restart, or
//! when it was evicted), which is the only time a staged file is read back.

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use ring::digest::{Context, SHA1_FOR_LEGACY_USE_ONLY, SHA256};
use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

/// One upload's running hash: the SHA-256 context over its first `len` bytes. Holding the
/// state's lock is being the upload's one writer, so concurrent appends are serialised.
#[derive(Default)]
pub struct State {
    hashed: Option<(u64, Context)>,
}

/// A checksum a client sent for one request's bytes (tus `Upload-Checksum`).
pub struct Checksum {
    pub algorithm: ChecksumAlgorithm,
    pub digest: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChecksumAlgorithm {
    Sha1,
    Sha256,
}

impl ChecksumAlgorithm {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "sha1" => Some(Self::Sha1),
            "sha256" => Some(Self::Sha256),
            _ => None,
        }
    }
}

#[derive(Debug)]
pub enum AppendError {
    Io(io::Error),
    /// The bytes did not match the request's checksum; none of them were kept.
    ChecksumMismatch,
    /// The bytes go past the upload's length; none of them were kept.
    TooLong,
    /// The request ended early and its checksum could not be checked; none were kept.
    Interrupted,
}

impl From<io::Error> for AppendError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

/// A staged file open and claimed for writing ([`Staging::claim`]), what
/// [`Staging::append`] writes through; dropping it lets others write.
pub struct Claim {
    id: String,
    file: tokio::fs::File,
}

pub struct Staging {
    dir: PathBuf,
    states: Mutex<HashMap<String, Arc<tokio::sync::Mutex<State>>>>,
    max_states: usize,
    pace: Option<Pacer>,
}

/// Paces the bytes every upload of the process takes in together, so that uploads at full
/// speed leave the rest of the server (the messages) their share of the CPU: each chunk
/// reserves its bytes, and a reservation past the bucket waits out its debt before the
/// next chunk is read — the request's body is then read more slowly, and TCP slows the
/// client down.
struct Pacer {
    per_sec: f64,
    burst: f64,
    /// Bytes in the bucket (negative: reserved ahead), as of when.
    state: Mutex<(f64, std::time::Instant)>,
}

impl Pacer {
    /// How long to wait before taking in `n` more bytes.
    fn reserve(&self, n: usize) -> std::time::Duration {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        let refill = now.duration_since(st.1).as_secs_f64() * self.per_sec;
        st.0 = (st.0 + refill).min(self.burst) - n as f64;
        st.1 = now;
        if st.0 >= 0.0 {
            std::time::Duration::ZERO
        } else {
            std::time::Duration::from_secs_f64(-st.0 / self.per_sec)
        }
    }
}

/// The stage the hash is rebuilt in.
const REHASH_CHUNK: usize = 1 << 20;
/// Bytes gathered before a write of the staged file.
const WRITE_BUFFER: usize = 1 << 20;

impl Staging {
    /// `max_states`: running hashes kept at most; past it, idle ones are dropped (and
    /// rebuilt from their file if their upload goes on).
    /// The directory is made with the first upload.
    pub fn new(dir: impl Into<PathBuf>, max_states: usize) -> Self {
        Self {
            dir: dir.into(),
            states: Mutex::new(HashMap::new()),
            max_states: max_states.max(1),
            pace: None,
        }
    }

    /// Every upload together takes in at most `bytes_per_sec` (after a burst of a quarter
    /// second's worth); 0: unpaced.
    pub fn paced(mut self, bytes_per_sec: u64) -> Self {
        self.pace = (bytes_per_sec > 0).then(|| {
            let per_sec = bytes_per_sec as f64;
            Pacer {
                per_sec,
                burst: per_sec / 4.0,
                state: Mutex::new((per_sec / 4.0, std::time::Instant::now())),
            }
        });
        self
    }

    /// The staged file of upload `id` (an id the API made: letters and digits only).
    pub fn path(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// Whether this process has the staged file of upload `id` (a cluster's api processes
    /// see the same ones only if their staging directories are one shared directory).
    pub async fn holds(&self, id: &str) -> bool {
        tokio::fs::try_exists(self.path(id)).await.unwrap_or(false)
    }

    /// Claims upload `id` for writing, against every process whose staging directory this
    /// is too (a shared volume): an OS lock on the staged file (`flock`), released when the
    /// claim is dropped. Within a process, [`Staging::state`]'s lock comes first; the claim
    /// is held from reading the upload's offset until the new one is recorded. `None`:
    /// another process is writing it; an error of kind `NotFound`: no staged file here.
    pub async fn claim(&self, id: &str) -> io::Result<Option<Claim>> {
        let path = self.path(id);
        let file = tokio::task::spawn_blocking(move || {
            let f = std::fs::OpenOptions::new().write(true).open(path)?;
            match f.try_lock() {
                Ok(()) => Ok(Some(f)),
                Err(std::fs::TryLockError::WouldBlock) => Ok(None),
                Err(std::fs::TryLockError::Error(e)) => Err(e),
            }
        })
        .await
        .map_err(io::Error::other)??;
        Ok(file.map(|f| Claim {
            id: id.to_owned(),
            file: tokio::fs::File::from_std(f),
        }))
    }

    /// An empty staged file for a new upload.
    pub async fn create(&self, id: &str) -> io::Result<()> {
        tokio::fs::create_dir_all(&self.dir).await?;
        let f = tokio::fs::File::create(self.path(id)).await?;
        f.sync_all().await
    }

    /// The upload's state; lock it to write. `None` when the table is full of uploads
    /// being written right now.
    pub fn state(&self, id: &str) -> Option<Arc<tokio::sync::Mutex<State>>> {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = states.get(id) {
            return Some(s.clone());
        }
        if states.len() >= self.max_states {
            // Idle ones go: nobody holds them, and their file has their bytes.
            states.retain(|_, s| Arc::strong_count(s) > 1);
            if states.len() >= self.max_states {
                return None;
            }
        }
        let s = Arc::new(tokio::sync::Mutex::new(State::default()));
        states.insert(id.to_owned(), s.clone());
        Some(s)
    }

    /// Running hashes held (a gauge).
    pub fn states(&self) -> usize {
        self.states.lock().map(|s| s.len()).unwrap_or(0)
    }

    /// Appends `body` to the claimed upload at `offset` (its durable offset) up to `length`
    /// in all, and makes it durable. Returns the new offset. Without a checksum, the bytes of a request
    /// that ends early are kept (the client resumes after them); with one, a request's
    /// bytes are kept only if they all came and match.
    pub async fn append<E>(
        &self,
        claim: &mut Claim,
        st: &mut State,
        offset: u64,
        length: u64,
        body: impl Stream<Item = Result<Bytes, E>>,
        checksum: Option<Checksum>,
    ) -> Result<u64, AppendError> {
        let Claim { id, file } = claim;
        let on_disk = file.metadata().await?.len();
        if on_disk < offset {
            return Err(io::Error::other("the staged file is shorter than its offset").into());
        }
        if on_disk > offset {
            // Written by a request that never answered: not part of the upload.
            file.set_len(offset).await?;
        }
        let mut hash = self.hashed(st, id, offset).await?;
        file.seek(io::SeekFrom::Start(offset)).await?;
        // A request's body comes in chunks of a few KiB; each write of the file is a hop to
        // the blocking pool, so they are gathered into writes of a MiB.
        let mut file = tokio::io::BufWriter::with_capacity(WRITE_BUFFER, file);
        let mut sum = checksum.map(|c| {
            let alg = match c.algorithm {
                ChecksumAlgorithm::Sha1 => &SHA1_FOR_LEGACY_USE_ONLY,
                ChecksumAlgorithm::Sha256 => &SHA256,
            };
            (Context::new(alg), c.digest)
        });
        let (mut at, mut failed) = (offset, None);
        let mut body = std::pin::pin!(body);
        while let Some(chunk) = body.next().await {
            let Ok(chunk) = chunk else {
                if sum.is_some() {
                    failed = Some(AppendError::Interrupted);
                }
                break;
            };
            if at + chunk.len() as u64 > length {
                failed = Some(AppendError::TooLong);
                break;
            }
            file.write_all(&chunk).await?;
            hash.update(&chunk);
            if let Some((ctx, _)) = sum.as_mut() {
                ctx.update(&chunk);
            }
            at += chunk.len() as u64;
            if let Some(p) = &self.pace {
                let wait = p.reserve(chunk.len());
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
            }
        }
        file.flush().await?;
        let file = file.into_inner();
        if failed.is_none()
            && let Some((ctx, want)) = sum
            && ctx.finish().as_ref() != want.as_slice()
        {
            failed = Some(AppendError::ChecksumMismatch);
        }
        if let Some(e) = failed {
            file.set_len(offset).await?;
            return Err(e);
        }
        file.sync_data().await?;
        st.hashed = Some((at, hash));
        Ok(at)
    }

    /// The lowercase hex SHA-256 of the upload's first `len` bytes (all of it, once
    /// complete).
    pub async fn digest(&self, id: &str, st: &mut State, len: u64) -> io::Result<String> {
        let ctx = self.hashed(st, id, len).await?;
        Ok(crate::hex(ctx.finish().as_ref()))
    }

    /// The running hash at `offset`: the one held, or one rebuilt from the file.
    async fn hashed(&self, st: &mut State, id: &str, offset: u64) -> io::Result<Context> {
        match &st.hashed {
            Some((at, ctx)) if *at == offset => Ok(ctx.clone()),
            _ => {
                let ctx = rehash(self.path(id), offset).await?;
                st.hashed = Some((offset, ctx.clone()));
                Ok(ctx)
            }
        }
    }

    /// Drops an upload's running hash and staged file (none is fine).
    pub async fn remove(&self, id: &str) -> io::Result<()> {
        self.forget(id);
        match tokio::fs::remove_file(self.path(id)).await {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Removes at most `limit` staged files untouched for longer than `older_than` (and
    /// their running hashes): those of uploads that expired while another process — which
    /// has no such file — removed their records. Returns how many went.
    pub async fn sweep(&self, older_than: std::time::Duration, limit: usize) -> io::Result<usize> {
        let mut dir = match tokio::fs::read_dir(&self.dir).await {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let mut removed = 0;
        while removed < limit
            && let Some(entry) = dir.next_entry().await?
        {
            let age = entry
                .metadata()
                .await?
                .modified()?
                .elapsed()
                .unwrap_or_default();
            if age > older_than
                && let Some(id) = entry.file_name().to_str()
            {
                self.remove(id).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Drops an upload's running hash (its file has moved on, or is gone).
    pub fn forget(&self, id: &str) {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        states.remove(id);
    }
}

async fn rehash(path: PathBuf, len: u64) -> io::Result<Context> {
    let mut f = tokio::fs::File::open(path).await?;
    let mut ctx = Context::new(&SHA256);
    let mut buf = vec![0; REHASH_CHUNK];
    let mut left = len;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = f.read(&mut buf[..want]).await?;
        if n == 0 {
            return Err(io::Error::other(
                "the staged file is shorter than its offset",
            ));
        }
        ctx.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(ctx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha256_hex(b: &[u8]) -> String {
        crate::hex(ring::digest::digest(&SHA256, b).as_ref())
    }

    async fn claimed(s: &Staging, id: &str) -> Claim {
        s.claim(id).await.unwrap().expect("nobody else writes it")
    }

    fn body(parts: Vec<&'static [u8]>) -> impl Stream<Item = Result<Bytes, io::Error>> {
        futures_util::stream::iter(parts.into_iter().map(|p| Ok(Bytes::from_static(p))))
    }

    #[tokio::test]
    async fn appends_resume_at_the_offset_and_the_hash_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let s = Staging::new(dir.path(), 4);
        s.create("u1").await.unwrap();
        let st = s.state("u1").unwrap();
        let mut g = st.lock().await;
        let at = s
            .append(
                &mut claimed(&s, "u1").await,
                &mut g,
                0,
                11,
                body(vec![b"hello", b" "]),
                None,
            )
            .await
            .unwrap();
        assert_eq!(at, 6);
        // Past the length: nothing kept.
        let too = s
            .append(
                &mut claimed(&s, "u1").await,
                &mut g,
                6,
                11,
                body(vec![b"world!!"]),
                None,
            )
            .await;
        assert!(matches!(too, Err(AppendError::TooLong)));
        // A wrong checksum: nothing kept.
        let bad = Checksum {
            algorithm: ChecksumAlgorithm::Sha256,
            digest: vec![0; 32],
        };
        let bad = s
            .append(
                &mut claimed(&s, "u1").await,
                &mut g,
                6,
                11,
                body(vec![b"wor"]),
                Some(bad),
            )
            .await;
        assert!(matches!(bad, Err(AppendError::ChecksumMismatch)));
        drop(g);

        // A new process: the running hash is rebuilt from the file.
        let s = Staging::new(dir.path(), 4);
        let st = s.state("u1").unwrap();
        let mut g = st.lock().await;
        let good = Checksum {
            algorithm: ChecksumAlgorithm::Sha1,
            digest: ring::digest::digest(&SHA1_FOR_LEGACY_USE_ONLY, b"world")
                .as_ref()
                .to_vec(),
        };
        let at = s
            .append(
                &mut claimed(&s, "u1").await,
                &mut g,
                6,
                11,
                body(vec![b"wor", b"ld"]),
                Some(good),
            )
            .await
            .unwrap();
        assert_eq!(at, 11);
        assert_eq!(std::fs::read(s.path("u1")).unwrap(), b"hello world");
        assert_eq!(
            s.digest("u1", &mut g, 11).await.unwrap(),
            sha256_hex(b"hello world")
        );
    }

    #[tokio::test]
    async fn an_interrupted_request_keeps_what_came_unless_it_had_a_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let s = Staging::new(dir.path(), 4);
        s.create("u2").await.unwrap();
        let st = s.state("u2").unwrap();
        let mut g = st.lock().await;
        let cut = || {
            futures_util::stream::iter(vec![
                Ok(Bytes::from_static(b"abc")),
                Err(io::Error::other("connection reset")),
            ])
        };
        assert_eq!(
            s.append(&mut claimed(&s, "u2").await, &mut g, 0, 10, cut(), None)
                .await
                .unwrap(),
            3
        );
        let sum = Checksum {
            algorithm: ChecksumAlgorithm::Sha256,
            digest: ring::digest::digest(&SHA256, b"abc").as_ref().to_vec(),
        };
        let r = s
            .append(
                &mut claimed(&s, "u2").await,
                &mut g,
                3,
                10,
                cut(),
                Some(sum),
            )
            .await;
        assert!(matches!(r, Err(AppendError::Interrupted)));
        assert_eq!(std::fs::read(s.path("u2")).unwrap(), b"abc");
        // Bytes past the durable offset (a request that never answered) are dropped.
        std::fs::write(s.path("u2"), b"abcXYZ").unwrap();
        let at = s
            .append(
                &mut claimed(&s, "u2").await,
                &mut g,
                3,
                10,
                body(vec![b"def"]),
                None,
            )
            .await
            .unwrap();
        assert_eq!(at, 6);
        assert_eq!(
            s.digest("u2", &mut g, 6).await.unwrap(),
            sha256_hex(b"abcdef")
        );
    }

    #[tokio::test]
    async fn uploads_together_take_in_no_more_than_the_pace() {
        let dir = tempfile::tempdir().unwrap();
        // 4 MB/s, a burst of 1 MB: 3 MB take at least half a second.
        let s = Staging::new(dir.path(), 4).paced(4_000_000);
        s.create("p").await.unwrap();
        let st = s.state("p").unwrap();
        let mut g = st.lock().await;
        let chunk: &'static [u8] = Box::leak(vec![7u8; 100_000].into_boxed_slice());
        let started = std::time::Instant::now();
        let body = futures_util::stream::iter(
            (0..30).map(|_| Ok::<_, io::Error>(Bytes::from_static(chunk))),
        );
        let at = s
            .append(
                &mut claimed(&s, "p").await,
                &mut g,
                0,
                3_000_000,
                body,
                None,
            )
            .await
            .unwrap();
        assert_eq!(at, 3_000_000);
        let took = started.elapsed();
        assert!(took >= std::time::Duration::from_millis(450), "{took:?}");
    }

    #[tokio::test]
    async fn a_claim_keeps_out_every_other_claim_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        // Two handles on one directory, as two processes on a shared volume: `flock` is
        // held per open file, so two opens in one process contend as two processes do.
        let (a, b) = (Staging::new(dir.path(), 4), Staging::new(dir.path(), 4));
        a.create("u1").await.unwrap();
        let held = a.claim("u1").await.unwrap().expect("free");
        assert!(b.claim("u1").await.unwrap().is_none());
        assert!(a.claim("u1").await.unwrap().is_none());
        drop(held);
        assert!(b.claim("u1").await.unwrap().is_some());
        let missing = b.claim("nope").await.err().unwrap();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
    }

    #[tokio::test]
    async fn a_sweep_removes_only_files_untouched_for_long() {
        let dir = tempfile::tempdir().unwrap();
        let s = Staging::new(dir.path(), 4);
        s.create("old").await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        s.create("new").await.unwrap();
        let gone = s
            .sweep(std::time::Duration::from_millis(200), 10)
            .await
            .unwrap();
        assert_eq!(gone, 1);
        assert!(!s.path("old").exists());
        assert!(s.path("new").exists());
    }

    #[tokio::test]
    async fn the_table_of_running_hashes_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let s = Staging::new(dir.path(), 2);
        let a = s.state("a").unwrap();
        let b = s.state("b").unwrap();
        assert!(s.state("c").is_none(), "both in use");
        drop(a);
        assert!(s.state("c").is_some(), "an idle one made room");
        assert!(s.states() <= 2);
        drop(b);
    }
}
