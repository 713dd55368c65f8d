//! Test support: LANs of Linux network namespaces, so mDNS (and anything else that must not
//! touch the machine's real network) can run in tests and benchmarks. Feature `netns`; Linux;
//! needs root (`CAP_SYS_ADMIN`) at run time.
//!
//! A [`Lan`] of `n` hosts is `n + 1` namespaces and nothing else:
//!
//! ```text
//!   <prefix>-h0          <prefix>-h1               <prefix>-br
//!   lo (up, multicast)   lo (up, multicast)
//!   lan0 10.99.0.1/24    lan0 10.99.0.2/24  ...    br0 (bridge, no multicast snooping)
//!     └── veth ─────────────┴── veth ───────────── v0, v1, ... (ports of br0)
//! ```
//!
//! Both ends of every veth pair are created inside namespaces (`ip -n <host> link add lan0
//! type veth peer name v<i> netns <prefix>-br`), so nothing is ever added to the root
//! namespace, and addresses (`10.99.0.0/24`) exist only inside the host namespaces. IPv6 is
//! off in the bridge namespace, and in the hosts unless the LAN is built with
//! [`Lan::new_dual_stack`]. Dropping the
//! [`Lan`] deletes every namespace it created, also after a panic or a partial setup.
//!
//! Code runs inside a namespace with [`run_in`] (or [`Lan::run_on`]): a new thread enters the
//! namespace, then runs the closure. Sockets belong to the namespace of the thread that creates
//! them, and threads inherit the namespace of the thread that spawns them, so a
//! [`MdnsDiscovery`](crate::MdnsDiscovery) started inside the closure runs entirely in the
//! namespace and may be returned and used (stopped, queried) from any thread afterwards.
//!
//! ```no_run
//! use shoal_discovery::netns::{self, Lan};
//!
//! if !netns::can_create_netns() {
//!     println!("{}", netns::SKIP_MESSAGE);
//!     return;
//! }
//! let lan = Lan::new(2).expect("build the LAN");
//! let addr = lan.run_on(0, || std::net::UdpSocket::bind("10.99.0.1:0").map(|s| s.local_addr()))
//!     .expect("enter h0");
//! println!("{addr:?}");
//! // `lan` dropped here: namespaces deleted.
//! ```
//!
//! `scripts/netns.sh up N PREFIX` / `down PREFIX` build and remove the same layout from a shell.

use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::in_root_netns;

mod nft;

pub use nft::{nft, nft_available, nft_input_rule};

/// The line tests print when they cannot run here.
pub const SKIP_MESSAGE: &str = "skipped: needs root to create network namespaces";

/// For tests: whether namespaces can be made here; if not, prints `<test>: <SKIP_MESSAGE>` so
/// the skip is visible in the test output, and the caller returns early (the test passes).
pub fn can_create_netns_or_say_skipped(test: &str) -> bool {
    let can = can_create_netns();
    if !can {
        println!("{test}: {SKIP_MESSAGE}");
    }
    can
}

/// The name of each host's LAN interface (inside its namespace).
pub const HOST_IF: &str = "lan0";

/// The name of the bridge (inside the bridge namespace).
pub const BRIDGE_IF: &str = "br0";

/// The most hosts a [`Lan`] can have (`10.99.0.1` ..= `10.99.0.250`).
pub const MAX_HOSTS: usize = 250;

/// How long [`Lan::new`] waits for each host's interface to come up.
const LINK_UP_TIMEOUT: Duration = Duration::from_secs(3);

/// Where `ip netns` keeps its namespaces.
const NETNS_DIR: &str = "/var/run/netns";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A fresh name prefix, unique in this process and across processes running at the same time:
/// `shoal-<pid>-<counter>`.
pub fn unique_prefix() -> String {
    format!(
        "shoal-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Whether this process can create (and delete) network namespaces: it is root, `ip` works,
/// and a probe namespace could be created and removed. Checked once per process.
pub fn can_create_netns() -> bool {
    static CAN: OnceLock<bool> = OnceLock::new();
    *CAN.get_or_init(|| {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return false;
        }
        // Without a reference namespace nothing can be verified.
        if root_netns_inode().is_err() {
            return false;
        }
        let probe = format!("{}-probe", unique_prefix());
        if ip(&["netns", "add", &probe]).is_err() {
            return false;
        }
        /// Deletes the probe namespace even if entering it panics.
        struct Probe<'a>(&'a str);
        impl Drop for Probe<'_> {
            fn drop(&mut self) {
                let _ = ip(&["netns", "del", self.0]);
            }
        }
        let guard = Probe(&probe);
        let entered = run_in(&probe, in_root_netns).is_ok_and(|in_root| !in_root);
        drop(guard);
        entered && !netns_exists(&probe)
    })
}

/// Whether a namespace named `name` exists (in `/var/run/netns`).
pub fn netns_exists(name: &str) -> bool {
    check_name(name).is_ok() && std::path::Path::new(NETNS_DIR).join(name).exists()
}

/// The inode identifying the network namespace `name`.
///
/// # Errors
///
/// If the name is invalid or the namespace does not exist.
pub fn netns_inode(name: &str) -> io::Result<u64> {
    check_name(name)?;
    Ok(std::fs::metadata(std::path::Path::new(NETNS_DIR).join(name))?.ino())
}

/// The inode identifying the root network namespace, as [`in_root_netns`] defines it.
///
/// # Errors
///
/// If no reference namespace can be read.
pub fn root_netns_inode() -> io::Result<u64> {
    crate::root_netns::linux::root_netns_id()
        .map(|(_, ino)| ino)
        .ok_or_else(|| io::Error::other("cannot identify the root network namespace"))
}

/// The network namespace (inode) of every mdns-sd daemon thread (`mDNS_daemon`) in this
/// process. Tests use it to check that no daemon runs in the root namespace and that the daemon
/// thread inherited the namespace of the thread that created it.
///
/// # Errors
///
/// If `/proc/self/task` cannot be listed.
pub fn mdns_daemon_thread_netns() -> io::Result<Vec<u64>> {
    let mut found = Vec::new();
    for task in std::fs::read_dir("/proc/self/task")? {
        let Ok(task) = task else { continue };
        let path = task.path();
        // Threads may exit while we look: skip what cannot be read.
        let Ok(comm) = std::fs::read_to_string(path.join("comm")) else {
            continue;
        };
        if comm.trim_end() != "mDNS_daemon" {
            continue;
        }
        if let Ok(meta) = std::fs::metadata(path.join("ns/net")) {
            found.push(meta.ino());
        }
    }
    Ok(found)
}

/// Runs `f` on a new thread inside the network namespace `ns` and returns its result. A panic
/// in `f` is resumed on the calling thread.
///
/// The thread checks that it really is in `ns` (and not in the root namespace) before running
/// `f`, and panics otherwise.
///
/// # Errors
///
/// If `ns` is not a valid name, does not exist, or cannot be entered.
pub fn run_in<T, F>(ns: &str, f: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    check_name(ns)?;
    let path = std::path::Path::new(NETNS_DIR).join(ns);
    let file = File::open(&path)?;
    let expected = file.metadata()?.ino();
    let ns_name = ns.to_owned();
    let thread = std::thread::Builder::new().name(format!("netns {ns}")).spawn(move || -> io::Result<T> {
        // SAFETY: `file` is an open descriptor of a network namespace file that stays open for
        // the call; setns only changes this (new, single-purpose) thread's namespace.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        drop(file);
        let actual = std::fs::metadata("/proc/thread-self/ns/net")?.ino();
        assert!(
            actual == expected && !in_root_netns(),
            "thread did not enter network namespace {ns_name}: refusing to run (root namespace: {})",
            in_root_netns()
        );
        Ok(f())
    })?;
    match thread.join() {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// A LAN of host namespaces joined by a bridge namespace; see the [module docs](self).
/// Dropping it deletes every namespace it created.
#[derive(Debug)]
pub struct Lan {
    prefix: String,
    bridge: Option<String>,
    hosts: Vec<String>,
}

impl Lan {
    /// A LAN of `hosts` hosts (IPv4 only), named with a fresh [`unique_prefix`].
    ///
    /// # Errors
    ///
    /// If `hosts` is 0 or more than [`MAX_HOSTS`], or an `ip` command fails (not root, no
    /// iproute2, ...). Whatever was created is deleted again.
    pub fn new(hosts: usize) -> io::Result<Self> {
        Self::build(hosts, false)
    }

    /// Like [`Lan::new`], with IPv6 on in the hosts (link-local addresses only, duplicate
    /// address detection off so they are usable at once).
    ///
    /// # Errors
    ///
    /// As [`Lan::new`].
    pub fn new_dual_stack(hosts: usize) -> io::Result<Self> {
        Self::build(hosts, true)
    }

    fn build(hosts: usize, ipv6: bool) -> io::Result<Self> {
        if hosts == 0 || hosts > MAX_HOSTS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a LAN has 1..={MAX_HOSTS} hosts"),
            ));
        }
        // From here on, `lan` owns whatever exists: an early return deletes it.
        let mut lan = Self {
            prefix: unique_prefix(),
            bridge: None,
            hosts: Vec::new(),
        };

        let br = format!("{}-br", lan.prefix);
        ip(&["netns", "add", &br])?;
        lan.bridge = Some(br.clone());
        // The bridge is pure layer 2: no IPv6 chatter (DAD, MLD, router solicitations) from it.
        set_ipv6(&br, false)?;
        ip(&["-n", &br, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            &br,
            "link",
            "add",
            BRIDGE_IF,
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        ip(&["-n", &br, "link", "set", BRIDGE_IF, "up"])?;

        for i in 0..hosts {
            let host = format!("{}-h{i}", lan.prefix);
            ip(&["netns", "add", &host])?;
            lan.hosts.push(host.clone());
            set_ipv6(&host, ipv6)?;
            ip(&["-n", &host, "link", "set", "lo", "multicast", "on"])?;
            ip(&["-n", &host, "link", "set", "lo", "up"])?;
            let port = format!("v{i}");
            ip(&[
                "-n", &host, "link", "add", HOST_IF, "type", "veth", "peer", "name", &port,
                "netns", &br,
            ])?;
            ip(&["-n", &br, "link", "set", &port, "master", BRIDGE_IF])?;
            ip(&["-n", &br, "link", "set", &port, "up"])?;
            let addr = format!("{}/24", Self::host_addr(i));
            ip(&["-n", &host, "addr", "add", &addr, "dev", HOST_IF])?;
            ip(&["-n", &host, "link", "set", HOST_IF, "multicast", "on"])?;
            ip(&["-n", &host, "link", "set", HOST_IF, "up"])?;
        }
        for host in &lan.hosts {
            wait_running(host, HOST_IF)?;
        }
        Ok(lan)
    }

    /// The address of host `i` (`10.99.0.<i + 1>`).
    pub fn host_addr(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 99, 0, u8::try_from(i + 1).unwrap_or(u8::MAX))
    }

    /// The address of host `i` on this LAN.
    ///
    /// # Panics
    ///
    /// If there is no host `i`.
    pub fn addr(&self, i: usize) -> Ipv4Addr {
        assert!(i < self.hosts.len(), "no host {i}");
        Self::host_addr(i)
    }

    /// The namespace name of host `i`.
    ///
    /// # Panics
    ///
    /// If there is no host `i`.
    pub fn host(&self, i: usize) -> &str {
        &self.hosts[i]
    }

    /// The host namespace names, in order.
    pub fn hosts(&self) -> &[String] {
        &self.hosts
    }

    /// The bridge namespace name.
    pub fn bridge(&self) -> &str {
        self.bridge.as_deref().unwrap_or_default()
    }

    /// The prefix all namespace names start with (what `scripts/netns.sh down` takes).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// [`run_in`] host `i`.
    ///
    /// # Errors
    ///
    /// As [`run_in`].
    ///
    /// # Panics
    ///
    /// If there is no host `i`, or as [`run_in`].
    pub fn run_on<T, F>(&self, i: usize, f: F) -> io::Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        run_in(self.host(i), f)
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        // Deleting a host namespace destroys its veth pair, the bridge port included.
        for ns in self.hosts.iter().rev().chain(self.bridge.as_ref()) {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!(
                    "netns: could not delete namespace {ns}: {e} (try scripts/netns.sh down {})",
                    self.prefix
                );
            }
        }
    }
}

/// Namespace names: 1..=64 of `[A-Za-z0-9_.-]`, not starting with `.` (no paths).
fn check_name(name: &str) -> io::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad namespace name {name:?}"),
        ))
    }
}

/// Runs `ip <args>`; an error carries its stderr.
fn ip(args: &[&str]) -> io::Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Turns IPv6 on (without duplicate address detection) or off in namespace `ns`, for the
/// interfaces that exist and those created later. `/proc/sys/net` shows the namespace of the
/// thread that opens it.
fn set_ipv6(ns: &str, on: bool) -> io::Result<()> {
    run_in(ns, move || -> io::Result<()> {
        for scope in ["all", "default"] {
            let base = format!("/proc/sys/net/ipv6/conf/{scope}");
            if !std::path::Path::new(&base).exists() {
                return if on {
                    Err(io::Error::other("IPv6 is not available"))
                } else {
                    Ok(())
                };
            }
            if on {
                std::fs::write(format!("{base}/accept_dad"), "0")?;
            }
            std::fs::write(format!("{base}/disable_ipv6"), if on { "0" } else { "1" })?;
        }
        Ok(())
    })?
}

/// Waits (at most [`LINK_UP_TIMEOUT`]) until `ifname` in `ns` is up and running: mdns-sd only
/// uses running interfaces and otherwise notices them up to 5 s later.
fn wait_running(ns: &str, ifname: &'static str) -> io::Result<()> {
    run_in(ns, move || {
        let deadline = Instant::now() + LINK_UP_TIMEOUT;
        loop {
            if link_running(ifname) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{ifname} did not come up"),
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    })?
}

/// Whether `ifname` has `IFF_UP | IFF_RUNNING` in the calling thread's namespace.
fn link_running(ifname: &str) -> bool {
    let Ok(name) = std::ffi::CString::new(ifname) else {
        return false;
    };
    // SAFETY: an ordinary datagram socket, closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return false;
    }
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes_with_nul();
    if bytes.len() > req.ifr_name.len() {
        // SAFETY: `fd` is the socket opened above, closed once.
        unsafe { libc::close(fd) };
        return false;
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads ifr_name and writes ifr_ifru.ifru_flags of `req`, which lives
    // for the call.
    let rc = unsafe { libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) };
    // SAFETY: `fd` is the socket opened above, closed once.
    unsafe { libc::close(fd) };
    if rc != 0 {
        return false;
    }
    // SAFETY: after a successful SIOCGIFFLAGS the flags member is the initialised one.
    let flags = i32::from(unsafe { req.ifr_ifru.ifru_flags });
    flags & libc::IFF_UP != 0 && flags & libc::IFF_RUNNING != 0
}
