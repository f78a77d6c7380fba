//! Snapshot manifest (being written).
