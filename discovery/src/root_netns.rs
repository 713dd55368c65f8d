//! Which network namespace the calling thread is in.

/// Whether the calling **thread** is in the root network namespace (the one PID 1 is in).
///
/// Linux keeps the network namespace per thread (`setns` changes only the calling thread), so
/// this compares the calling thread's `/proc/thread-self/ns/net` with `/proc/1/ns/net` (device
/// and inode). Sockets belong to the namespace of the thread that creates them, and threads
/// inherit the namespace of the thread that spawns them.
///
/// Fails safe: if either file cannot be read (no `/proc`, or not allowed to look at PID 1)
/// the answer is `true`. On systems without network namespaces (not Linux) it is `false`.
///
/// [`MdnsDiscovery`](crate::MdnsDiscovery) refuses to start in the root namespace unless
/// allowed with [`MdnsConfig::allow_root_netns`](crate::MdnsConfig::allow_root_netns).
pub fn in_root_netns() -> bool {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::MetadataExt;

        let mine = std::fs::metadata("/proc/thread-self/ns/net");
        let init = std::fs::metadata("/proc/1/ns/net");
        match (mine, init) {
            (Ok(mine), Ok(init)) => mine.dev() == init.dev() && mine.ino() == init.ino(),
            _ => true,
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}
