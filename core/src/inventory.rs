//! Unit inventory (being written).
