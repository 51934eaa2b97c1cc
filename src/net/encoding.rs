//! How a chunk travels in a chunk response: raw, zstd or gzip compressed, or as a fast_rsync
//! delta against the requester's old data for that region. The sender picks the cheapest; the
//! receiver decodes whatever a peer sent into at most the size it asked for, so a hostile answer
//! (a compression bomb, a delta that writes past the end) is an error, never a big allocation.

use super::proto;
use crate::config::Compression;

/// The cheapest encoding of a chunk: an rsync delta against the requester's old data when it sent a
/// signature and the delta is smaller; else compressed when that saves at least 1/16 (random or
/// already compressed data goes raw, saving the receiver a pointless decompression).
pub fn encode(data: Vec<u8>, signature: &[u8], compression: Compression) -> (Vec<u8>, proto::Encoding) {
    let packed = compress(&data, compression);
    let delta = if signature.is_empty() { None } else { delta(&data, signature) };
    [packed, delta.map(|d| (d, proto::Encoding::RsyncDelta))]
        .into_iter()
        .flatten()
        .filter(|(d, _)| d.len() < data.len())
        .min_by_key(|(d, _)| d.len())
        .unwrap_or((data, proto::Encoding::Raw))
}

/// A fast_rsync delta of `data` against the signature a peer sent (`None` if it is not one).
fn delta(data: &[u8], signature: &[u8]) -> Option<Vec<u8>> {
    // Bytes 4..8 of a signature are its block size. fast_rsync's diff never moves past a matching
    // block of 0 bytes: a peer's signature saying 0 would spin this thread forever (found by the
    // rsync_delta fuzz target).
    if signature.get(4..8).is_none_or(|b| b == [0; 4]) {
        return None;
    }
    let signature = fast_rsync::Signature::deserialize(signature.to_vec()).ok()?;
    let mut out = Vec::new();
    fast_rsync::diff(&signature.index(), data, &mut out).ok()?;
    Some(out)
}

/// Bytes of a chunk's start compressed first, to tell whether the rest is worth trying: random or
/// already compressed data (media, archives) then costs 1/16 of a compression attempt, not a whole
/// one (zstd spends ~35 µs on 64 KiB of random data, a sixth of what serving the chunk costs).
const COMPRESSION_PROBE: usize = 4096;

/// zstd's fastest level: chunks are served as fast as the disk reads them.
const ZSTD_LEVEL: i32 = 1;

thread_local! {
    /// One zstd context per serving thread: making one per chunk cost 2.7% of a node's CPU when
    /// it served 100,000 files of 1 KiB (W7, perf).
    static ZSTD: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> = const { std::cell::RefCell::new(None) };
}

/// `data` compressed, if that saves at least 1/16 of it.
fn compress(data: &[u8], compression: Compression) -> Option<(Vec<u8>, proto::Encoding)> {
    let pack = |data: &[u8]| -> Option<(Vec<u8>, proto::Encoding)> {
        let packed = match compression {
            Compression::None => None,
            Compression::Zstd => ZSTD.with_borrow_mut(|z| {
                let z = match z {
                    Some(z) => z,
                    None => z.insert(zstd::bulk::Compressor::new(ZSTD_LEVEL).ok()?),
                };
                z.compress(data).ok().map(|c| (c, proto::Encoding::Zstd))
            }),
            Compression::Gzip => {
                use std::io::Write;
                let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                enc.write_all(data).ok().and_then(|_| enc.finish().ok()).map(|c| (c, proto::Encoding::Gzip))
            }
        };
        packed.filter(|(c, _)| c.len() < data.len() - data.len() / 16)
    };
    if data.len() >= 4 * COMPRESSION_PROBE && pack(&data[..COMPRESSION_PROBE]).is_none() {
        return None;
    }
    pack(data)
}

/// A chunk answer back to the chunk's bytes. `size` is the chunk size we asked for: no compressed
/// or delta answer decodes to more (the caller still checks size and hash of what comes back), and
/// a delta applies to `base`, our old data.
pub fn decode(data: Vec<u8>, encoding: i32, size: u32, base: Option<&[u8]>) -> Result<Vec<u8>, String> {
    match proto::Encoding::try_from(encoding) {
        Ok(proto::Encoding::Raw) => Ok(data),
        Ok(proto::Encoding::RsyncDelta) => {
            let base = base.ok_or("a delta we did not ask for")?;
            let mut out = Vec::with_capacity(size as usize);
            fast_rsync::apply_limited(base, &data, &mut out, size as usize).map_err(|e| format!("bad delta: {e}"))?;
            Ok(out)
        }
        Ok(proto::Encoding::Zstd) => {
            zstd::bulk::decompress(&data, size as usize).map_err(|e| format!("bad zstd data: {e}"))
        }
        Ok(proto::Encoding::Gzip) => {
            use std::io::Read;
            let mut out = Vec::with_capacity(size as usize);
            flate2::read::GzDecoder::new(&data[..])
                .take(size as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| format!("bad gzip data: {e}"))?;
            if out.len() > size as usize {
                return Err(format!("gzip data decodes to more than {size} bytes"));
            }
            Ok(out)
        }
        _ => Err(format!("unknown encoding {encoding}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes that do not compress (BLAKE3's output stream).
    fn random(len: usize) -> Vec<u8> {
        let mut out = vec![0; len];
        blake3::Hasher::new().update(b"noise").finalize_xof().fill(&mut out);
        out
    }

    fn signature(old: &[u8]) -> Vec<u8> {
        let options = fast_rsync::SignatureOptions { block_size: 1024, crypto_hash_size: 8 };
        fast_rsync::Signature::calculate(old, options).into_serialized()
    }

    #[test]
    fn each_chunk_travels_in_its_cheapest_encoding_and_decodes_to_itself() {
        let text: Vec<u8> =
            b"the quick brown fox jumps over the lazy dog\n".iter().copied().cycle().take(64 << 10).collect();
        let noise = random(64 << 10);
        let mut edited = noise.clone();
        edited[30_000] ^= 1;
        // A text file under the probe's size, and with a random start but text after it.
        let small_text = text[..3000].to_vec();
        let mixed: Vec<u8> = noise[..COMPRESSION_PROBE].iter().chain(&text[COMPRESSION_PROBE..]).copied().collect();
        let cases = [
            (&text, Vec::new(), Compression::Zstd, proto::Encoding::Zstd),
            (&text, Vec::new(), Compression::Gzip, proto::Encoding::Gzip),
            (&text, Vec::new(), Compression::None, proto::Encoding::Raw),
            (&small_text, Vec::new(), Compression::Zstd, proto::Encoding::Zstd),
            // Random data goes raw: the probe says so before the whole chunk is tried.
            (&noise, Vec::new(), Compression::Zstd, proto::Encoding::Raw),
            (&mixed, Vec::new(), Compression::Zstd, proto::Encoding::Raw),
            // One flipped byte against the old chunk: a delta, far smaller than any compression.
            (&edited, signature(&noise), Compression::Zstd, proto::Encoding::RsyncDelta),
            // A signature of unrelated data: the delta would be the whole chunk plus overhead.
            (&text, signature(&noise), Compression::Zstd, proto::Encoding::Zstd),
        ];
        for (i, (data, sig, compression, expected)) in cases.into_iter().enumerate() {
            let (wire, encoding) = encode(data.clone(), &sig, compression);
            assert_eq!(encoding, expected, "case {i}");
            assert!(wire.len() <= data.len(), "case {i}: {} > {}", wire.len(), data.len());
            let back = decode(wire, encoding as i32, data.len() as u32, Some(&noise)).unwrap();
            assert_eq!(&back, data, "case {i}");
        }
    }

    #[test]
    fn garbage_from_a_peer_is_an_error_not_a_panic() {
        let size = 4096;
        assert!(decode(vec![1, 2, 3], proto::Encoding::Zstd as i32, size, None).is_err());
        assert!(decode(vec![1, 2, 3], proto::Encoding::Gzip as i32, size, None).is_err());
        assert!(decode(vec![1, 2, 3], proto::Encoding::RsyncDelta as i32, size, Some(&[0; 16])).is_err());
        // A delta we never asked for (no base), and an encoding that does not exist.
        assert!(decode(vec![1, 2, 3], proto::Encoding::RsyncDelta as i32, size, None).is_err());
        assert!(decode(vec![1, 2, 3], 99, size, None).is_err());
    }

    #[test]
    fn a_signature_with_blocks_of_zero_bytes_is_not_used() {
        // Magic, block size 0, strong hash size 0, and one block whose weak checksum is that of
        // no bytes at all: fast_rsync would match it at the same offset forever.
        let signature = [0x72, 0x73, 0x01, 0x36, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let data: Vec<u8> = b"abc".iter().copied().cycle().take(600).collect();
        let (wire, encoding) = encode(data.clone(), &signature, Compression::None);
        assert_eq!((wire, encoding), (data, proto::Encoding::Raw));
    }

    #[test]
    fn a_compressed_answer_never_decodes_past_the_size_asked_for() {
        let text: Vec<u8> = b"abc".iter().copied().cycle().take(64 << 10).collect();
        for compression in [Compression::Zstd, Compression::Gzip] {
            let (wire, encoding) = encode(text.clone(), &[], compression);
            assert!(decode(wire.clone(), encoding as i32, text.len() as u32, None).is_ok());
            let short = text.len() as u32 - 1;
            assert!(decode(wire, encoding as i32, short, None).is_err(), "{encoding:?} decoded past {short} bytes");
        }
    }
}
