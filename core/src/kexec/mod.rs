//! Kernel loading (being written).
