//! Media bytes, apart from what they mean to the IM layer: where blobs live, how an
//! upload in progress is staged, what a file is, and how an image is looked at safely.
//!
//! ```text
//! blob.rs     the BlobStore trait (content-addressed, write-once), the filesystem backend,
//!             and the suite every backend passes
//! s3.rs       the S3 backend (object_store): conditional PUTs, multipart for large blobs
//! staging.rs  uploads in progress: a file per upload, appended at its offset, with the
//!             SHA-256 kept while the bytes stream in (no second pass), chunk checksums,
//!             one writer per upload
//! sniff.rs    the type of a file from its first bytes, never from the client
//! picture.rs  images: dimensions and a thumbnail under size and allocation limits, and
//!             metadata (EXIF, PNG text) stripped from what others download
//! ```

pub mod blob;
pub mod picture;
#[cfg(feature = "s3")]
pub mod s3;
pub mod sniff;
pub mod staging;

pub use blob::{BlobStore, FsBlobs};

/// Lowercase hex of some bytes (a SHA-256 digest, here).
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Whether `s` is a blob name: 64 lowercase hex digits (so it can never name a path).
pub fn is_hash(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The pairs of a tus `Upload-Metadata` value: `key base64,key base64,…` (a key alone
/// has an empty value). `None` if it is malformed.
pub fn parse_metadata(raw: &str) -> Option<Vec<(String, String)>> {
    use base64::Engine;
    if raw.trim().is_empty() {
        return Some(vec![]);
    }
    raw.split(',')
        .map(|pair| {
            let mut it = pair.trim().splitn(2, ' ');
            let key = it.next().filter(|k| !k.is_empty())?;
            let value = match it.next() {
                Some(v) => base64::engine::general_purpose::STANDARD
                    .decode(v.trim())
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())?,
                None => String::new(),
            };
            Some((key.to_owned(), value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tus_metadata_is_parsed_and_malformed_refused() {
        let got = parse_metadata("filename d29ybGRfZG9taW5hdGlvbl9wbGFuLnBkZg==,is_confidential")
            .unwrap();
        assert_eq!(
            got,
            vec![
                (
                    "filename".to_owned(),
                    "world_domination_plan.pdf".to_owned()
                ),
                ("is_confidential".to_owned(), String::new())
            ]
        );
        assert_eq!(parse_metadata("").unwrap(), vec![]);
        assert!(parse_metadata("filename !!notbase64").is_none());
        assert!(parse_metadata(",").is_none());
    }
}
