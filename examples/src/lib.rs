//! Code shared by the examples.
