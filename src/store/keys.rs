//! Key layouts of the column families. Folder ids and paths never contain NUL, which separates them.
//!
//! | family  | key                                   | value                        |
//! |---------|---------------------------------------|------------------------------|
//! | files   | folder 0 path                         | FileRecord (ours)            |
//! | seq     | folder 0 sequence(be64)               | path                         |
//! | remote  | device(32) folder 0 path              | FileRecord (as the peer sent) |
//! | chunks  | hash(32) folder 0 path 0 offset(be64) | size (be32)                  |
//! | diffs   | folder 0 path                         | (base seq, seq, chunk edits) |
//! | needs   | folder 0 order(3) path                | size(be64) + a queued need    |
//! | needpath | folder 0 path                        | its order(3)                  |
//! | meta    | "f" folder / "p" device(32) folder / "r" folder | FolderMeta / Progress / RootId |

use crate::core::DeviceId;

pub fn file(folder: &str, path: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(folder.len() + path.len() + 1);
    k.extend_from_slice(folder.as_bytes());
    k.push(0);
    k.extend_from_slice(path.as_bytes());
    k
}

pub fn folder_prefix(folder: &str) -> Vec<u8> {
    file(folder, "")
}

/// The first key after every key of `folder` (its prefix with the separator raised by one).
pub fn folder_end(folder: &str) -> Vec<u8> {
    let mut end = folder_prefix(folder);
    *end.last_mut().expect("a separator") = 1;
    end
}

pub fn seq(folder: &str, sequence: u64) -> Vec<u8> {
    let mut k = folder_prefix(folder);
    k.extend_from_slice(&sequence.to_be_bytes());
    k
}

pub fn remote(device: &DeviceId, folder: &str, path: &str) -> Vec<u8> {
    let mut k = device.0.to_vec();
    k.extend_from_slice(&file(folder, path));
    k
}

pub fn remote_prefix(device: &DeviceId, folder: &str) -> Vec<u8> {
    remote(device, folder, "")
}

/// Bytes of a chunk hash: the chunk index's keys start with one (its prefix extractor's length).
pub const HASH_LEN: usize = 32;

pub fn chunk(hash: &[u8; 32], folder: &str, path: &str, offset: u64) -> Vec<u8> {
    let mut k = hash.to_vec();
    k.extend_from_slice(&file(folder, path));
    k.push(0);
    k.extend_from_slice(&offset.to_be_bytes());
    k
}

/// Splits a chunk key back into (folder, path, offset).
pub fn parse_chunk(key: &[u8]) -> Option<(String, String, u64)> {
    let rest = key.get(32..)?;
    let (body, offset) = rest.split_at(rest.len().checked_sub(9)?);
    if offset[0] != 0 {
        return None;
    }
    let offset = u64::from_be_bytes(offset[1..].try_into().ok()?);
    let sep = body.iter().position(|b| *b == 0)?;
    let folder = std::str::from_utf8(&body[..sep]).ok()?.to_string();
    let path = std::str::from_utf8(&body[sep + 1..]).ok()?.to_string();
    Some((folder, path, offset))
}

pub fn folder_meta(folder: &str) -> Vec<u8> {
    let mut k = b"f".to_vec();
    k.extend_from_slice(folder.as_bytes());
    k
}

/// A queued need's key: ordered for the pull by `order` (phase, then depth), then by path.
pub fn need(folder: &str, order: [u8; 3], path: &str) -> Vec<u8> {
    let mut k = folder_prefix(folder);
    k.extend_from_slice(&order);
    k.extend_from_slice(path.as_bytes());
    k
}

/// The identity of the folder's root directory (`core::root::RootId`).
pub fn root_id(folder: &str) -> Vec<u8> {
    let mut k = b"r".to_vec();
    k.extend_from_slice(folder.as_bytes());
    k
}

pub fn progress(device: &DeviceId, folder: &str) -> Vec<u8> {
    let mut k = b"p".to_vec();
    k.extend_from_slice(&device.0);
    k.extend_from_slice(folder.as_bytes());
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_keys_round_trip() {
        let k = chunk(&[9; 32], "default", "a/b c.txt", 123456);
        assert_eq!(parse_chunk(&k), Some(("default".into(), "a/b c.txt".into(), 123456)));
    }
}
