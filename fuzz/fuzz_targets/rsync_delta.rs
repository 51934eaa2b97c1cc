//! rsync deltas as we use them (fast_rsync): the requester sends a signature of its old data, the
//! server answers with a delta, the requester applies it to its old data (`net::encoding`). Any
//! delta bytes applied to any base never produce more than the size asked for; any signature
//! bytes a peer sends are handled without panic; and a real signature of the base always lets the
//! answer decode to exactly the chunk.
//!
//! Input: block size exponent (1 byte), size asked for (3 bytes LE, modulo 256 KiB as in
//! chunk_decode), base length (2 bytes LE),
//! the base, then the rest: used as the delta, as the new chunk, and as a peer's signature.
#![no_main]

use fast_rsync::{Signature, SignatureOptions};
use libfuzzer_sys::fuzz_target;
use syncnode::config::Compression;
use syncnode::net::encoding::{decode, encode};
use syncnode::net::proto::Encoding;
use syncnode_fuzz::write_seeds_if_asked;

fn options(block_exponent: u8) -> SignatureOptions {
    // Block sizes 16 B ..= 16 KiB (the Puller uses 256 B ..= 16 KiB).
    SignatureOptions { block_size: 16 << (block_exponent % 11), crypto_hash_size: 8 }
}

fn input(block_exponent: u8, size: usize, base: &[u8], rest: &[u8]) -> Vec<u8> {
    let mut out = vec![block_exponent];
    out.extend_from_slice(&(size as u32).to_le_bytes()[..3]);
    out.extend_from_slice(&(base.len() as u16).to_le_bytes());
    out.extend_from_slice(base);
    out.extend_from_slice(rest);
    out
}

fn seeds() -> Vec<Vec<u8>> {
    let base: Vec<u8> = (0..2000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let mut edited = base.clone();
    edited[1500] ^= 0x55;
    edited.splice(100..100, b"inserted".iter().copied());
    let mut out = Vec::new();
    for exponent in [2u8, 4] {
        let signature = Signature::calculate(&base, options(exponent)).into_serialized();
        let (delta, encoding) = encode(edited.clone(), &signature, Compression::None);
        assert_eq!(encoding, Encoding::RsyncDelta);
        out.push(input(exponent, edited.len(), &base, &delta));
        out.push(input(exponent, edited.len(), &base[..64], &signature));
    }
    out.push(input(4, 100, b"", b"short new chunk"));
    out
}

fuzz_target!(
    init: write_seeds_if_asked(seeds),
    |data: &[u8]| {
        if data.len() < 6 {
            return;
        }
        let block_exponent = data[0];
        let size = u32::from_le_bytes([data[1], data[2], data[3], 0]) % (256 << 10);
        let base_len = u16::from_le_bytes([data[4], data[5]]) as usize;
        let Some(base) = data.get(6..6 + base_len) else { return };
        let rest = &data[6 + base_len..];

        // A hostile delta against our old data.
        if let Ok(out) = decode(rest.to_vec(), Encoding::RsyncDelta as i32, size, Some(base)) {
            assert!(out.len() <= size as usize, "delta produced {} bytes for {size} asked", out.len());
        }
        // A hostile signature: the server still answers with something, or with the raw chunk.
        let (wire, used) = encode(base.to_vec(), rest, Compression::None);
        assert!(wire.len() <= base.len());
        if used == Encoding::Raw {
            assert_eq!(wire, base);
        }
        // A real signature of our old data: the answer decodes to exactly the new chunk.
        let signature = Signature::calculate(base, options(block_exponent)).into_serialized();
        let (wire, used) = encode(rest.to_vec(), &signature, Compression::None);
        assert_eq!(decode(wire, used as i32, rest.len() as u32, Some(base)).as_deref().ok(), Some(rest), "{used:?} round trip");
    }
);
