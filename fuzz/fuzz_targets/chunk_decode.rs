//! Chunk answers from a peer (`net::encoding::decode`): raw, zstd, gzip, with any bytes and any
//! declared encoding. A compressed answer never decodes to more than the size we asked for (a
//! compression bomb is an error, not an allocation), raw data comes back as sent; and whatever we
//! encode for a peer decodes back to the same bytes.
//!
//! Input: encoding (1 byte), size asked for (3 bytes, little endian, taken modulo 256 KiB: the
//! decoder allocates that much up front, and bigger sizes only make each run slower), then the
//! answer's data.
#![no_main]

use libfuzzer_sys::fuzz_target;
use syncnode::config::Compression;
use syncnode::net::encoding::{decode, encode};
use syncnode::net::proto::Encoding;
use syncnode_fuzz::write_seeds_if_asked;

fn input(encoding: Encoding, size: usize, data: &[u8]) -> Vec<u8> {
    let mut out = vec![encoding as u8];
    out.extend_from_slice(&(size as u32).to_le_bytes()[..3]);
    out.extend_from_slice(data);
    out
}

fn seeds() -> Vec<Vec<u8>> {
    let text: Vec<u8> = b"the quick brown fox jumps over the lazy dog\n".iter().copied().cycle().take(3000).collect();
    let zeros = vec![0u8; 200_000];
    let mut out = Vec::new();
    for (data, compression) in [
        (&text, Compression::Zstd),
        (&text, Compression::Gzip),
        (&zeros, Compression::Zstd),
        (&zeros, Compression::Gzip),
    ] {
        let (wire, encoding) = encode(data.clone(), &[], compression);
        assert_ne!(encoding, Encoding::Raw);
        out.push(input(encoding, data.len(), &wire));
        // The same answer, but we asked for fewer bytes than it holds.
        out.push(input(encoding, data.len() / 2, &wire));
    }
    out.push(input(Encoding::Raw, 5, b"hello"));
    out
}

fuzz_target!(
    init: write_seeds_if_asked(seeds),
    |data: &[u8]| {
        if data.len() < 4 {
            return;
        }
        let encoding = data[0] as i32 % 5; // 4 is no encoding at all
        let size = u32::from_le_bytes([data[1], data[2], data[3], 0]) % (256 << 10);
        let answer = &data[4..];
        match decode(answer.to_vec(), encoding, size, None) {
            Ok(out) if encoding == Encoding::Raw as i32 => assert_eq!(out, answer),
            Ok(out) => {
                assert!(out.len() <= size as usize, "encoding {encoding}: {} bytes decoded for {size} asked", out.len());
                assert_ne!(encoding, Encoding::RsyncDelta as i32, "a delta decoded without a base");
            }
            Err(_) => assert!(encoding != Encoding::Raw as i32),
        }
        // Our own encoding of these bytes decodes back to them.
        let compression = [Compression::None, Compression::Zstd, Compression::Gzip][data[0] as usize % 3];
        let (wire, used) = encode(answer.to_vec(), &[], compression);
        assert!(wire.len() <= answer.len());
        assert_eq!(decode(wire, used as i32, answer.len() as u32, None).as_deref().ok(), Some(answer), "{used:?} round trip");
    }
);
