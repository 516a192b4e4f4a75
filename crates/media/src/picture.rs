//! Images, looked at safely: the dimensions are read from the header and checked before
//! anything is decoded (a 100,000 × 100,000 PNG of a few kilobytes is refused without a
//! byte of pixels allocated), decoding runs under an allocation limit, and metadata is
//! removed from what other users download (EXIF carries the GPS position of the phone
//! that took the photo).

use image::{DynamicImage, ImageDecoder, ImageReader};
use std::io::Cursor;

#[derive(Clone, Debug)]
pub struct Limits {
    /// Width × height at most.
    pub max_pixels: u64,
    /// Either side at most.
    pub max_side: u32,
    /// Bytes the decoder may allocate at most (its own buffers and the pixels).
    pub max_alloc: u64,
}

impl Limits {
    /// The decoder's allocation limit for `max_pixels`: four bytes a pixel and room for
    /// the decoder's own buffers.
    pub fn for_pixels(max_pixels: u64, max_side: u32) -> Self {
        Self {
            max_pixels,
            max_side,
            max_alloc: max_pixels.saturating_mul(4).saturating_add(64 << 20),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum PictureError {
    /// Not an image this server decodes, or a damaged one.
    Undecodable(String),
    /// Over the pixel or side limit, or the decoder's allocation limit.
    TooLarge,
}

impl std::fmt::Display for PictureError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Undecodable(why) => write!(f, "not a decodable image: {why}"),
            Self::TooLarge => f.write_str("the image's dimensions are over the limit"),
        }
    }
}

/// What a look at an image found.
#[derive(Debug)]
pub struct Inspected {
    /// As displayed (after the EXIF orientation).
    pub width: u32,
    pub height: u32,
    /// A JPEG at most `thumb_px` on its long side, without metadata.
    pub thumb: Vec<u8>,
}

fn reader(bytes: &[u8]) -> Result<ImageReader<Cursor<&[u8]>>, PictureError> {
    ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| PictureError::Undecodable(e.to_string()))
}

fn undecodable(e: image::ImageError) -> PictureError {
    match e {
        image::ImageError::Limits(_) => PictureError::TooLarge,
        e => PictureError::Undecodable(e.to_string()),
    }
}

/// The image's dimensions, and its thumbnail. CPU-bound: run it off the async runtime,
/// in a bounded pool.
pub fn inspect(bytes: &[u8], limits: &Limits, thumb_px: u32) -> Result<Inspected, PictureError> {
    // The WebP decoder reads the EXIF chunk (for the orientation) into a buffer of the
    // size the chunk declares, outside the allocation limit: 4 GiB for a 70-byte file.
    // Every chunk must fit in the file before any decoder sees it.
    if is_webp(bytes) {
        walk_webp(bytes, |_, _| {})?;
    }
    // The header first: nothing is decoded for an image over the limits.
    let (w, h) = reader(bytes)?.into_dimensions().map_err(undecodable)?;
    if w == 0 || h == 0 {
        return Err(PictureError::Undecodable("an empty image".into()));
    }
    if w > limits.max_side || h > limits.max_side || u64::from(w) * u64::from(h) > limits.max_pixels
    {
        return Err(PictureError::TooLarge);
    }
    let mut dec_limits = image::Limits::default();
    dec_limits.max_image_width = Some(limits.max_side);
    dec_limits.max_image_height = Some(limits.max_side);
    dec_limits.max_alloc = Some(limits.max_alloc);
    let mut r = reader(bytes)?;
    r.limits(dec_limits);
    let mut decoder = r.into_decoder().map_err(undecodable)?;
    let orientation = decoder.orientation().ok();
    let mut img = DynamicImage::from_decoder(decoder).map_err(undecodable)?;
    if let Some(o) = orientation {
        img.apply_orientation(o);
    }
    let (width, height) = (img.width(), img.height());
    let small = if width.max(height) > thumb_px {
        img.thumbnail(thumb_px, thumb_px)
    } else {
        img
    };
    let mut thumb = Vec::new();
    let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut thumb, 80);
    DynamicImage::ImageRgb8(small.to_rgb8())
        .write_with_encoder(enc)
        .map_err(undecodable)?;
    Ok(Inspected {
        width,
        height,
        thumb,
    })
}

/// The image without its metadata (JPEG APP1 EXIF/XMP, APP13 IPTC and comments; PNG
/// eXIf, text and time chunks; WebP EXIF and XMP chunks), or `None` if it had none. An
/// error for a JPEG, PNG or WebP whose structure cannot be walked.
pub fn strip_metadata(mime: &str, bytes: &[u8]) -> Result<Option<Vec<u8>>, PictureError> {
    match mime {
        "image/jpeg" => strip_jpeg(bytes),
        "image/png" => strip_png(bytes),
        "image/webp" => strip_webp(bytes),
        _ => Ok(None),
    }
}

fn damaged(what: &str) -> PictureError {
    PictureError::Undecodable(format!("damaged {what}"))
}

fn strip_jpeg(b: &[u8]) -> Result<Option<Vec<u8>>, PictureError> {
    let mut out = Vec::with_capacity(b.len());
    out.extend_from_slice(b.get(..2).ok_or_else(|| damaged("JPEG"))?);
    let (mut i, mut removed) = (2, false);
    loop {
        let (Some(&ff), Some(&marker)) = (b.get(i), b.get(i + 1)) else {
            return Err(damaged("JPEG"));
        };
        if ff != 0xFF {
            return Err(damaged("JPEG"));
        }
        match marker {
            // Fill byte before a marker.
            0xFF => i += 1,
            // Start of scan or end of image: the rest is entropy-coded data, kept as it is.
            0xDA | 0xD9 => {
                out.extend_from_slice(&b[i..]);
                break;
            }
            // Markers without a length.
            0x01 | 0xD0..=0xD7 => {
                out.extend_from_slice(&b[i..i + 2]);
                i += 2;
            }
            _ => {
                let len = b
                    .get(i + 2..i + 4)
                    .map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])))
                    .ok_or_else(|| damaged("JPEG"))?;
                let seg = b.get(i..i + 2 + len).filter(|_| len >= 2);
                let seg = seg.ok_or_else(|| damaged("JPEG"))?;
                if matches!(marker, 0xE1 | 0xED | 0xFE) {
                    removed = true;
                } else {
                    out.extend_from_slice(seg);
                }
                i += 2 + len;
            }
        }
    }
    Ok(removed.then_some(out))
}

fn strip_png(b: &[u8]) -> Result<Option<Vec<u8>>, PictureError> {
    let mut out = Vec::with_capacity(b.len());
    out.extend_from_slice(b.get(..8).ok_or_else(|| damaged("PNG"))?);
    let (mut i, mut removed) = (8, false);
    while i < b.len() {
        let len = b
            .get(i..i + 4)
            .map(|l| u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize)
            .ok_or_else(|| damaged("PNG"))?;
        let end = i
            .checked_add(12)
            .and_then(|n| n.checked_add(len))
            .filter(|&e| e <= b.len())
            .ok_or_else(|| damaged("PNG"))?;
        let kind = &b[i + 4..i + 8];
        if matches!(kind, b"eXIf" | b"tEXt" | b"zTXt" | b"iTXt" | b"tIME") {
            removed = true;
        } else {
            out.extend_from_slice(&b[i..end]);
        }
        i = end;
        if kind == b"IEND" {
            break;
        }
    }
    Ok(removed.then_some(out))
}

fn is_webp(b: &[u8]) -> bool {
    b.get(..4) == Some(b"RIFF") && b.get(8..12) == Some(b"WEBP")
}

/// Calls `each` with every chunk of a WebP file, as where it starts and where the next one
/// does. WebP is a RIFF file: `RIFF`, the size of what follows (little-endian), `WEBP`,
/// then chunks of a FourCC, a size and the payload padded to an even length. An error
/// unless every chunk lies within the size the file declares, and that within the file;
/// chunks before the one that does not are seen.
fn walk_webp(b: &[u8], mut each: impl FnMut(usize, usize)) -> Result<(), PictureError> {
    let le = |at: usize| {
        b.get(at..at + 4)
            .map(|l| u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize)
    };
    if !is_webp(b) {
        return Err(damaged("WebP"));
    }
    let end = le(4)
        .and_then(|n| n.checked_add(8))
        .filter(|&e| e <= b.len())
        .ok_or_else(|| damaged("WebP"))?;
    let mut i = 12;
    while i < end {
        let len = le(i + 4).ok_or_else(|| damaged("WebP"))?;
        let next = len
            .checked_add(len & 1)
            .and_then(|n| n.checked_add(i + 8))
            .filter(|&e| e <= end)
            .ok_or_else(|| damaged("WebP"))?;
        each(i, next);
        i = next;
    }
    Ok(())
}

/// Metadata is only in WebP's extended form, whose `VP8X` chunk flags the EXIF and XMP
/// chunks present: both chunks go, and so do their flags.
fn strip_webp(b: &[u8]) -> Result<Option<Vec<u8>>, PictureError> {
    const EXIF_FLAG: u8 = 0x08;
    const XMP_FLAG: u8 = 0x04;
    let mut out = Vec::with_capacity(b.len());
    out.extend_from_slice(b.get(..12).ok_or_else(|| damaged("WebP"))?);
    let (mut removed, mut vp8x) = (false, None);
    walk_webp(b, |at, next| {
        match &b[at..at + 4] {
            b"EXIF" | b"XMP " => removed = true,
            kind => {
                // Its payload's first byte is the flags (a chunk of at least 10 bytes).
                if kind == b"VP8X" && next >= at + 9 {
                    vp8x = Some(out.len() + 8);
                }
                out.extend_from_slice(&b[at..next]);
            }
        }
    })?;
    if !removed {
        return Ok(None);
    }
    if let Some(flags) = vp8x {
        out[flags] &= !(EXIF_FLAG | XMP_FLAG);
    }
    let size = u32::try_from(out.len() - 8).map_err(|_| damaged("WebP"))?;
    out[4..8].copy_from_slice(&size.to_le_bytes());
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageEncoder, RgbImage};

    fn limits() -> Limits {
        Limits::for_pixels(50_000_000, 20_000)
    }

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let mut out = Vec::new();
        image::codecs::png::PngEncoder::new(&mut out)
            .write_image(img.as_raw(), w, h, image::ExtendedColorType::Rgb8)
            .unwrap();
        out
    }

    /// PNG's chunk CRC (ISO 3309), bit by bit: for building test files.
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

    #[test]
    fn a_thumbnail_keeps_the_aspect_and_is_a_jpeg() {
        let got = inspect(&png(1200, 600), &limits(), 320).unwrap();
        assert_eq!((got.width, got.height), (1200, 600));
        let t = image::load_from_memory(&got.thumb).unwrap();
        assert_eq!((t.width(), t.height()), (320, 160));
        assert_eq!(crate::sniff::mime(&got.thumb), "image/jpeg");
    }

    #[test]
    fn giant_dimensions_are_refused_before_decoding() {
        // A valid header (CRC and all) claiming 100,000 × 100,000 pixels, about 40 GB
        // decoded: refused from the header alone, nothing allocated.
        let mut b = png(1, 1);
        b[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        b[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        let crc = crc32(&b[12..29]);
        b[29..33].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(
            inspect(&b, &limits(), 320).unwrap_err(),
            PictureError::TooLarge
        );
        // Over the pixel limit with a valid file.
        let small = Limits::for_pixels(100 * 100, 20_000);
        assert_eq!(
            inspect(&png(200, 200), &small, 320).unwrap_err(),
            PictureError::TooLarge
        );
        assert!(matches!(
            inspect(b"not an image at all", &limits(), 320),
            Err(PictureError::Undecodable(_))
        ));
    }

    #[test]
    fn metadata_is_stripped_and_the_picture_kept() {
        // A JPEG with an EXIF segment carrying a (fake) GPS block and a comment.
        let img = RgbImage::from_fn(64, 48, |x, _| image::Rgb([x as u8 * 3, 0, 0]));
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new(&mut jpeg)
            .write_image(img.as_raw(), 64, 48, image::ExtendedColorType::Rgb8)
            .unwrap();
        let exif = b"Exif\0\0MM\0*GPSLatitude=52.52N";
        let mut app1 = vec![0xFF, 0xE1];
        app1.extend_from_slice(&((exif.len() + 2) as u16).to_be_bytes());
        app1.extend_from_slice(exif);
        let with = [
            &jpeg[..2],
            &app1,
            &[0xFF, 0xFE, 0, 5, b'h', b'i', b'!'],
            &jpeg[2..],
        ]
        .concat();
        let stripped = strip_metadata("image/jpeg", &with).unwrap().unwrap();
        assert_eq!(stripped, jpeg);
        assert!(!stripped.windows(11).any(|w| w == b"GPSLatitude"));
        assert_eq!(strip_metadata("image/jpeg", &jpeg).unwrap(), None);
        assert!(strip_metadata("image/jpeg", &with[..40]).is_err());

        // A PNG with a text chunk.
        let plain = png(8, 8);
        let text = [&0u32.to_be_bytes()[..], b"tEXtABCD"].concat();
        let with = [&plain[..33], &text, &plain[33..]].concat();
        assert_eq!(strip_metadata("image/png", &with).unwrap().unwrap(), plain);
        assert_eq!(strip_metadata("image/png", &plain).unwrap(), None);
    }

    /// A WebP chunk: FourCC, little-endian size, payload, a pad byte if the size is odd.
    fn chunk(kind: &[u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut c = [&kind[..], &(payload.len() as u32).to_le_bytes(), payload].concat();
        if payload.len() % 2 == 1 {
            c.push(0);
        }
        c
    }

    fn riff(chunks: &[Vec<u8>]) -> Vec<u8> {
        let body = chunks.concat();
        [
            b"RIFF",
            &((body.len() + 4) as u32).to_le_bytes()[..],
            b"WEBP",
            &body,
        ]
        .concat()
    }

    #[test]
    fn webp_metadata_is_stripped_and_the_picture_kept() {
        let img = RgbImage::from_fn(20, 10, |x, y| image::Rgb([x as u8 * 9, y as u8 * 20, 3]));
        let mut simple = Vec::new();
        image::codecs::webp::WebPEncoder::new_lossless(&mut simple)
            .write_image(img.as_raw(), 20, 10, image::ExtendedColorType::Rgb8)
            .unwrap();
        assert_eq!(
            &simple[12..16],
            b"VP8L",
            "a lossless WebP in the simple form"
        );
        assert_eq!(strip_metadata("image/webp", &simple).unwrap(), None);
        let vp8l = simple[12..].to_vec();
        // The extended form: VP8X (EXIF and XMP flagged; canvas 20 × 10, stored minus one),
        // the image, then an EXIF chunk with a (fake) position and an odd-sized XMP chunk.
        let vp8x = |flags: u8| chunk(b"VP8X", &[flags, 0, 0, 0, 19, 0, 0, 9, 0, 0]);
        let with = riff(&[
            vp8x(0x08 | 0x04),
            vp8l.clone(),
            chunk(b"EXIF", b"MM\0*GPSLatitude=52.52N"),
            chunk(b"XMP ", b"<x:xmpmeta>where</x:xmpmeta>!"),
        ]);
        let stripped = strip_metadata("image/webp", &with).unwrap().unwrap();
        assert_eq!(stripped, riff(&[vp8x(0), vp8l]));
        assert!(!stripped.windows(11).any(|w| w == b"GPSLatitude"));
        let decoded = image::load_from_memory(&stripped).unwrap().to_rgb8();
        assert_eq!(decoded, img);
        // Cut short, or a chunk claiming more than there is: refused, never read past.
        assert!(strip_metadata("image/webp", &with[..with.len() - 3]).is_err());
        let mut lying = with.clone();
        let exif_at = with.windows(4).position(|w| w == b"EXIF").unwrap();
        lying[exif_at + 4..exif_at + 8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(strip_metadata("image/webp", &lying).is_err());
        assert!(strip_metadata("image/webp", b"RIFF\0\0\0\0WEBX").is_err());
    }

    /// Found by fuzzing (the input as found): a 69-byte WebP whose EXIF chunk claims about
    /// 4 GiB had the decoder allocate that much when asked for the orientation.
    #[test]
    fn a_webp_chunk_larger_than_the_file_is_refused_before_decoding() {
        let b: &[u8] = &[
            0x52, 0x49, 0x46, 0x46, 0x56, 0x00, 0x00, 0x00, 0x57, 0x45, 0x42, 0x50, 0x56, 0x50,
            0x38, 0x58, 0x0a, 0x00, 0x00, 0x00, 0x30, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x01,
            0x00, 0x00, 0x56, 0x50, 0x38, 0x4c, 0x0e, 0x00, 0x00, 0x00, 0x2f, 0x01, 0x40, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x07, 0x7a, 0x45, 0x58, 0x49, 0x46,
            0x0b, 0x00, 0xf7, 0xff, 0x4d, 0x4d, 0x00, 0x2a, 0x00, 0x51, 0x44, 0x2f, 0x00,
        ];
        assert!(
            matches!(inspect(b, &limits(), 64), Err(PictureError::Undecodable(m)) if m == "damaged WebP")
        );
    }
}
