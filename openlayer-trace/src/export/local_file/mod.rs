//! The local trace file: its line format and the writer.

mod format;
pub(crate) mod writer;

#[cfg(feature = "client")]
pub(crate) use format::{Appends, append, append_with};
pub use format::{LocalEntry, LocalLine, LocalLines, read_local_file};
