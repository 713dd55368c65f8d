//! Which network namespace the calling thread is in.

/// Whether the calling **thread** is in the root network namespace.
///
/// Linux keeps the network namespace per thread (`setns` changes only the calling thread), so
/// this looks at the calling thread's `/proc/thread-self/ns/net`. Sockets belong to the
/// namespace of the thread that creates them, and threads inherit the namespace of the thread
/// that spawns them.
///
/// "Root" is the namespace of PID 1 (`/proc/1/ns/net`). Where that cannot be read (containers
/// and sandboxes often hide PID 1 even from root), it is the namespace of the topmost ancestor
/// of this process whose namespace can be read: the shell or supervisor the process was
/// started from, so a process started with `ip netns exec NAME ...` from a shell in the root
/// namespace still counts its own namespace as not root.
///
/// A namespace made with `ip netns add` (bind-mounted under `/run/netns`) is never root.
///
/// Fails safe: if the calling thread's namespace or every reference is unreadable, the answer
/// is `true`. On systems without network namespaces (not Linux) it is `false`.
///
/// [`MdnsDiscovery`](crate::MdnsDiscovery) refuses to start in the root namespace unless
/// allowed with [`MdnsConfig::allow_root_netns`](crate::MdnsConfig::allow_root_netns).
pub fn in_root_netns() -> bool {
    #[cfg(target_os = "linux")]
    {
        let mine = linux::netns_id("/proc/thread-self/ns/net");
        // A namespace made with `ip netns add` is bind-mounted under /run/netns: being in one
        // of those settles it, even for a process whose ancestors are gone (a daemon reparented
        // to an unreadable PID 1).
        if mine.is_some() && linux::named_netns_ids().contains(&mine) {
            return false;
        }
        match (mine, linux::root_netns_id()) {
            (Some(mine), Some(root)) => mine == root,
            _ => true,
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

#[cfg(target_os = "linux")]
pub(crate) mod linux {
    use std::os::unix::fs::MetadataExt;

    /// A network namespace's identity: device and inode of its nsfs file.
    pub(crate) type NetnsId = (u64, u64);

    /// The identity of the namespace `path` (a `/proc/.../ns/net` link or a bind mount of one).
    pub(crate) fn netns_id(path: &str) -> Option<NetnsId> {
        std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
    }

    /// The reference "root" namespace: PID 1's, else the topmost readable ancestor's (see
    /// [`in_root_netns`](super::in_root_netns)).
    pub(crate) fn root_netns_id() -> Option<NetnsId> {
        if let Some(id) = netns_id("/proc/1/ns/net") {
            return Some(id);
        }
        let mut topmost = netns_id("/proc/self/ns/net");
        let mut pid = std::process::id();
        // Process trees are shallow; the bound guards against a pid loop while they change.
        for _ in 0..64 {
            let Some(parent) = parent_pid(pid) else { break };
            if parent <= 1 {
                break;
            }
            match netns_id(&format!("/proc/{parent}/ns/net")) {
                Some(id) => topmost = Some(id),
                None => break,
            }
            pid = parent;
        }
        topmost
    }

    /// The identities of the namespaces named by `ip netns add` (bind mounts in `/run/netns`).
    pub(crate) fn named_netns_ids() -> Vec<Option<NetnsId>> {
        let Ok(entries) = std::fs::read_dir("/run/netns") else {
            return Vec::new();
        };
        entries
            .flatten()
            .take(4096)
            .map(|e| netns_id(&e.path().to_string_lossy()))
            .collect()
    }

    fn parent_pid(pid: u32) -> Option<u32> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("PPid:"))
            .and_then(|v| v.trim().parse().ok())
    }
}
