//! Look-ups of network interfaces by name, in the calling thread's network namespace.
//!
//! On other platforms than Unix nothing can be checked and every answer is "yes".

/// Whether an interface with this name exists (cannot be checked here: assume it does).
#[cfg(not(unix))]
pub(super) fn interface_exists(_name: &str) -> bool {
    true
}

/// Whether the interface `name` has the multicast flag (cannot be checked here: assume so).
#[cfg(not(unix))]
pub(super) fn multicast_flag(_name: &str) -> bool {
    true
}

/// Whether an interface with this name exists in the calling thread's network namespace.
#[cfg(unix)]
pub(super) fn interface_exists(name: &str) -> bool {
    let Ok(name) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call;
    // if_nametoindex only reads it.
    unsafe { libc::if_nametoindex(name.as_ptr()) != 0 }
}

/// Whether the interface `name` has the `IFF_MULTICAST` flag, looked up in the calling
/// thread's network namespace (mdns-sd calls the predicates on its daemon thread).
#[cfg(unix)]
pub(super) fn multicast_flag(name: &str) -> bool {
    let mut ifaddrs: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head to the pointer we pass; on success we own the list
    // and free it below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut ifaddrs) } != 0 {
        return false;
    }
    let mut found = false;
    let mut cursor = ifaddrs;
    // The list is finite; the bound only guards against a corrupted one.
    for _ in 0..100_000 {
        if cursor.is_null() {
            break;
        }
        // SAFETY: `cursor` is a non-null node of the list getifaddrs returned, not freed yet.
        let entry = unsafe { &*cursor };
        if !entry.ifa_name.is_null() {
            // SAFETY: ifa_name is a NUL-terminated string owned by the list.
            let entry_name = unsafe { std::ffi::CStr::from_ptr(entry.ifa_name) };
            if entry_name.to_bytes() == name.as_bytes()
                && entry.ifa_flags & libc::IFF_MULTICAST as u32 != 0
            {
                found = true;
                break;
            }
        }
        cursor = entry.ifa_next;
    }
    // SAFETY: `ifaddrs` is the list getifaddrs returned; it is freed exactly once.
    unsafe { libc::freeifaddrs(ifaddrs) };
    found
}
