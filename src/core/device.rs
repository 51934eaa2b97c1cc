//! Device identities. A device ID is the BLAKE3 hash of the device's TLS certificate, written in
//! base32; its first 8 bytes form the `ShortId` that keys version-vector counters.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DeviceId(pub [u8; 32]);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ShortId(pub u64);

impl DeviceId {
    pub fn from_certificate(der: &[u8]) -> Self {
        DeviceId(*blake3::hash(der).as_bytes())
    }

    pub fn short(&self) -> ShortId {
        ShortId(u64::from_be_bytes(self.0[..8].try_into().expect("8 bytes")))
    }

    /// The first characters of the textual ID, as used in conflict file names and logs.
    pub fn prefix(&self) -> String {
        self.to_string()[..7].to_string()
    }
}

impl ShortId {
    /// The prefix of the device ID this short id was cut from (the first 7 base32 characters
    /// depend only on the first 35 bits, which the short id keeps).
    pub fn prefix(&self) -> String {
        let mut bytes = [0u8; 32];
        bytes[..8].copy_from_slice(&self.0.to_be_bytes());
        DeviceId(bytes).prefix()
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&data_encoding::BASE32_NOPAD.encode(&self.0))
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{0}` is not a device ID (52 base32 characters, as `syncnode id` prints them)")]
pub struct BadDeviceId(pub String);

impl FromStr for DeviceId {
    type Err = BadDeviceId;

    /// Accepts the printed form, in either case, with or without `-` and spaces between groups.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let clean: String =
            s.chars().filter(|c| *c != '-' && !c.is_whitespace()).map(|c| c.to_ascii_uppercase()).collect();
        let bytes = data_encoding::BASE32_NOPAD.decode(clean.as_bytes()).map_err(|_| BadDeviceId(s.to_string()))?;
        let arr: [u8; 32] = bytes.try_into().map_err(|_| BadDeviceId(s.to_string()))?;
        Ok(DeviceId(arr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn the_printed_id_parses_back(bytes in proptest::array::uniform32(any::<u8>())) {
            let id = DeviceId(bytes);
            let text = id.to_string();
            prop_assert_eq!(text.len(), 52);
            prop_assert_eq!(text.parse::<DeviceId>().unwrap(), id);
            prop_assert_eq!(text.to_lowercase().parse::<DeviceId>().unwrap(), id);
            prop_assert_eq!(id.short().prefix(), id.prefix());
        }
    }

    #[test]
    fn garbage_is_not_an_id() {
        assert!("hello".parse::<DeviceId>().is_err());
        assert!("".parse::<DeviceId>().is_err());
    }
}
