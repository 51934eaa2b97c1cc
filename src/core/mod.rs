//! The deterministic heart of syncnode: file records, version vectors, path rules and the
//! decisions taken on them. Nothing here touches a disk, a socket or a clock (time comes in as an
//! argument), so every rule is tested exhaustively without I/O; the actors are thin shells around it.

pub mod chunks;
pub mod conflict;
mod convergence;
pub mod debounce;
pub mod decide;
pub mod device;
pub mod dial;
pub mod divergence;
pub mod folder;
pub mod need_budget;
pub mod path;
pub mod plan;
pub mod pull;
pub mod record;
pub mod replica;
pub mod retry;
pub mod root;
pub mod session;
pub mod sharing;
pub mod status;
pub mod version;
pub mod versioning;
pub mod watch;

pub use decide::{decide, Action};
pub use device::{DeviceId, ShortId};
pub use record::{Chunk, FileKind, FileRecord};
pub use sharing::SharedWith;
pub use version::{Ordering, VersionVector};
