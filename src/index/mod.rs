//! The I/O of the Index that needs no actor: the store as the rules read it ([`StoreView`] for
//! the scanner, [`FolderRecords`] for `core::replica`, [`FolderDisk`] for `core::folder`), one
//! scan, run on a blocking thread ([`ScanJob`]), what it found judged against the index, and a
//! peer's batch of records decoded and stored ([`store_remote`]). What is scanned, and when, is decided in
//! `core::folder`; the Index actor carries it out with these.
//!
//! It sits beside `actors` and uses none of them; only the Index actor uses it.

mod records;
mod remote;
mod scan;

pub use records::{
    accept_root, needs, needs_at, needs_page, open_folder, purge_tombstones, sources, FolderDisk, FolderRecords,
    StoreView,
};
pub use remote::{judge_scanned, store_remote, Judged, Refusal, Stored};
pub use scan::{ScanJob, Scanned};
