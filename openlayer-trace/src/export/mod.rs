//! Where rows go.

pub(crate) mod local_file;
pub(crate) mod openlayer;
pub(crate) mod spool;
