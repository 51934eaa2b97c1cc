//! The records directly inside one directory of a folder, in path order, read one at a time: a
//! full scan walks the disk and these side by side, a directory at a time, so it neither looks each
//! file up nor remembers what it has seen.

use rocksdb::{DBRawIteratorWithThreadMode, DB};

use crate::core::record::Listed;
use crate::core::FileRecord;

pub struct Children<'a> {
    pub(super) iter: DBRawIteratorWithThreadMode<'a, DB>,
    /// The key prefix of the directory's children: the folder's prefix, then `dir/` (nothing for
    /// the root).
    pub(super) prefix: Vec<u8>,
    pub(super) decode: fn(&[u8]) -> anyhow::Result<FileRecord>,
}

impl Iterator for Children<'_> {
    type Item = Listed;

    fn next(&mut self) -> Option<Listed> {
        loop {
            let key = self.iter.key().filter(|k| k.starts_with(&self.prefix))?;
            let rest = &key[self.prefix.len()..];
            if let Some(slash) = rest.iter().position(|&b| b == b'/') {
                // A deeper record: everything under this child is skipped with one seek (`0` follows `/`).
                let name = String::from_utf8_lossy(&rest[..slash]).into_owned();
                let mut past = key[..self.prefix.len() + slash].to_vec();
                past.push(b'/' + 1);
                self.iter.seek(&past);
                return Some(Listed::Below(name));
            }
            let record = self.iter.value().map(self.decode);
            self.iter.next();
            match record {
                Some(Ok(record)) => return Some(Listed::Record(record)),
                // An undecodable record is skipped, as everywhere the index is listed.
                _ => continue,
            }
        }
    }
}
