//! Internals that Megalith's own tools (`wal-hexdump`, the fuzz targets) read:
//! decoders for the on-disk structures, stable enough for tools, not an API
//! for applications (which use [`crate::EventStore`]).

pub mod log;
