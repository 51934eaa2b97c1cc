//! The I/O of the Index that needs no actor: the store as the rules read it ([`StoreView`] for
//! the scanner, [`FolderRecords`] for `core::replica`, [`FolderDisk`] for `core::folder`), and one
//! scan, run on a blocking thread ([`ScanJob`]). What is scanned, and when, is decided in
//! `core::folder`; the Index actor carries it out with these.
//!
//! It sits beside `actors` and uses none of them; only the Index actor uses it.

mod records;
mod scan;

pub use records::{FolderDisk, FolderRecords, StoreView};
pub use scan::{ScanJob, Scanned};
