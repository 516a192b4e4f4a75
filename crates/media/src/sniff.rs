//! What a file is, from its first bytes. The client's word is never taken for the type:
//! a file it calls `image/png` that is not one is served as what it is, so a browser
//! never renders something the server did not check.

/// Bytes the sniffer looks at.
pub const SNIFF_LEN: usize = 512;

/// The MIME type of a file beginning with `head`.
pub fn mime(head: &[u8]) -> &'static str {
    let at = |i: usize, sig: &[u8]| head.get(i..i + sig.len()) == Some(sig);
    if at(0, &[0xFF, 0xD8, 0xFF]) {
        "image/jpeg"
    } else if at(0, b"\x89PNG\r\n\x1a\n") {
        "image/png"
    } else if at(0, b"GIF87a") || at(0, b"GIF89a") {
        "image/gif"
    } else if at(0, b"RIFF") && at(8, b"WEBP") {
        "image/webp"
    } else if at(0, b"RIFF") && at(8, b"WAVE") {
        "audio/wav"
    } else if at(0, b"OggS") {
        "audio/ogg"
    } else if at(0, &[0x1A, 0x45, 0xDF, 0xA3]) {
        "video/webm"
    } else if at(4, b"ftyp") {
        match head.get(8..12) {
            Some(b"M4A ") | Some(b"M4B ") => "audio/mp4",
            Some(b"qt  ") => "video/quicktime",
            _ => "video/mp4",
        }
    } else if at(0, b"ID3") || (head.len() > 1 && head[0] == 0xFF && head[1] & 0xE0 == 0xE0) {
        "audio/mpeg"
    } else if at(0, b"%PDF-") {
        "application/pdf"
    } else if at(0, b"PK\x03\x04") {
        "application/zip"
    } else if !head.is_empty() && text(head) {
        "text/plain"
    } else {
        "application/octet-stream"
    }
}

/// UTF-8 (allowing a character cut at the end) without control bytes other than
/// whitespace.
fn text(head: &[u8]) -> bool {
    let valid = match std::str::from_utf8(head) {
        Ok(s) => s,
        Err(e) if e.error_len().is_none() => match std::str::from_utf8(&head[..e.valid_up_to()]) {
            Ok(s) => s,
            Err(_) => return false,
        },
        Err(_) => return false,
    };
    !valid
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t' | '\x0c'))
}

/// Whether the type is a container a voice note may come in (browsers record WebM or Ogg
/// Opus, phones MP4/AAC).
pub fn may_be_voice(mime: &str) -> bool {
    mime.starts_with("audio/") || matches!(mime, "video/webm" | "video/mp4")
}

/// The audio type of a voice note in container `mime`.
pub fn as_audio(mime: &str) -> &'static str {
    match mime {
        "video/webm" => "audio/webm",
        "video/mp4" | "audio/mp4" => "audio/mp4",
        "audio/ogg" => "audio/ogg",
        "audio/wav" => "audio/wav",
        "audio/mpeg" => "audio/mpeg",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_come_from_the_bytes() {
        let cases: [(&[u8], &str); 14] = [
            (b"\xFF\xD8\xFF\xE0\0\x10JFIF", "image/jpeg"),
            (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", "image/png"),
            (b"GIF89a\x01\0", "image/gif"),
            (b"RIFF\0\0\0\0WEBPVP8 ", "image/webp"),
            (b"RIFF\0\0\0\0WAVEfmt ", "audio/wav"),
            (b"OggS\0\x02", "audio/ogg"),
            (b"\x1A\x45\xDF\xA3\x9f", "video/webm"),
            (b"\0\0\0\x20ftypisom", "video/mp4"),
            (b"\0\0\0\x20ftypM4A ", "audio/mp4"),
            (b"ID3\x04\0", "audio/mpeg"),
            (b"%PDF-1.7\n", "application/pdf"),
            ("héllo\nworld".as_bytes(), "text/plain"),
            (b"\0\x01\x02binary", "application/octet-stream"),
            (b"", "application/octet-stream"),
        ];
        for (head, want) in cases {
            assert_eq!(mime(head), want, "{head:?}");
        }
        // A multi-byte character cut by the sniff window is still text.
        assert_eq!(mime(&"ab€".as_bytes()[..4]), "text/plain");
    }
}
