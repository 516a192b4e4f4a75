//! Uploaded files as the server looks at them: the type sniffed from the first bytes, the
//! metadata walk of JPEG, PNG and WebP (which must never grow a file), the image decoder under
//! its limits (small here, so a bomb is refused rather than decoded), and the tus
//! `Upload-Metadata` header.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xinge_media::picture::{Limits, inspect, strip_metadata};

fuzz_target!(|data: &[u8]| {
    let mime = xinge_media::sniff::mime(data);
    for m in [mime, "image/jpeg", "image/png", "image/webp"] {
        if let Ok(Some(stripped)) = strip_metadata(m, data) {
            assert!(stripped.len() < data.len(), "stripping never grows a file");
        }
    }
    let limits = Limits::for_pixels(1_000_000, 2_000);
    if let Ok(seen) = inspect(data, &limits, 64) {
        assert!(seen.width <= 2_000 && seen.height <= 2_000);
        assert!(u64::from(seen.width) * u64::from(seen.height) <= 1_000_000);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = xinge_media::parse_metadata(text);
    }
});
