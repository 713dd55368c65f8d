//! Shoal node (work in progress).
