//! Internals that Megalith's own tools read (`wal-hexdump`, `index-doctor`,
//! the fuzz targets, the crash tests): decoders and checkers for the
//! on-disk structures, stable enough for tools, not an API for applications
//! (which use [`crate::EventStore`]).

pub mod index;
pub mod log;
