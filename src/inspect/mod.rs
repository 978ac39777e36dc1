//! Internals the tools read (`index-doctor`, the fuzz targets): stable
//! enough for tools, not for applications. Applications use
//! [`EventStore`](crate::EventStore) and nothing here.

pub mod index;
