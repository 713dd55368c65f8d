//! A `nats-server` child process for one scenario run: bound to `127.0.0.1` on a free port,
//! waited for until it accepts a connection, killed and reaped on drop.

use std::fs::File;
use std::io::{self, Read as _, Seek as _, SeekFrom};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{BenchError, BenchResult};

/// Command-line flags every server gets besides `-p <port>`, as printed in the set-up lines:
/// client port on loopback only. Nothing else is switched on: no cluster routes, no
/// monitoring HTTP port, no leaf nodes, no gateways, no JetStream (all off by default).
pub const FLAGS: &str = "-a 127.0.0.1";

/// Where the binary is looked for when it is not on `PATH` (Debian installs it there, and
/// `/usr/sbin` is not on a normal user's `PATH`).
const FALLBACK_BINARY: &str = "/usr/sbin/nats-server";
/// How long a server may take to accept its first connection.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between two readiness probes.
const PROBE_INTERVAL: Duration = Duration::from_millis(10);
/// Starts tried with a fresh free port (another process may take the port between our
/// probe and the server's bind).
const START_ATTEMPTS: usize = 3;
/// Bytes of the server's log quoted in an error.
const LOG_TAIL: u64 = 2_000;

/// A running `nats-server`, owned by one scenario run.
///
/// Dropping it kills the process and waits for it, so a run that fails or panics leaves no
/// server behind. Its log (stdout and stderr) goes to a file in the temporary directory,
/// quoted in errors and removed on drop.
#[derive(Debug)]
pub struct NatsServer {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl NatsServer {
    /// Starts `nats-server -a 127.0.0.1 -p <free port>` and waits (at most 10 s) until it
    /// accepts a TCP connection.
    ///
    /// Fails with an error that says what to install if the binary is missing, and with the
    /// tail of the server's log if it exits or does not come up in time.
    pub fn start() -> BenchResult<Self> {
        let binary = binary()?;
        let mut last_error = BenchError::msg("nats-server was never started");
        for _ in 0..START_ATTEMPTS {
            match Self::start_once(&binary) {
                Ok(server) => return Ok(server),
                // Exited at once: most likely the port was taken meanwhile; try another.
                Err(Started::Exited(e)) => last_error = e,
                Err(Started::Failed(e)) => return Err(e),
            }
        }
        Err(last_error)
    }

    fn start_once(binary: &Path) -> Result<Self, Started> {
        let port = free_port().map_err(|e| Started::Failed(e.context("finding a free port")))?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let log = std::env::temp_dir().join(format!(
            "shoal-bench-nats-{}-{port}.log",
            std::process::id()
        ));
        let spawn = || -> io::Result<Child> {
            let out = File::create(&log)?;
            let err = out.try_clone()?;
            Command::new(binary)
                .args(FLAGS.split(' '))
                .args(["-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
        };
        let child = spawn().map_err(|e| {
            let _ = std::fs::remove_file(&log);
            Started::Failed(BenchError::from(e).context(format!("starting {}", binary.display())))
        })?;
        // From here on, dropping `server` kills the process.
        let mut server = Self { child, addr, log };
        server.wait_until_ready()?;
        Ok(server)
    }

    fn wait_until_ready(&mut self) -> Result<(), Started> {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    return Err(Started::Exited(BenchError::msg(format!(
                        "nats-server exited at start ({status}); its log: {}",
                        self.log_tail()
                    ))));
                }
                Ok(None) => {}
                Err(e) => return Err(Started::Failed(e.into())),
            }
            if TcpStream::connect_timeout(&self.addr, PROBE_INTERVAL).is_ok() {
                return Ok(());
            }
            std::thread::sleep(PROBE_INTERVAL);
        }
        Err(Started::Failed(BenchError::msg(format!(
            "nats-server did not accept connections on {} within {START_TIMEOUT:?}; its log: {}",
            self.addr,
            self.log_tail()
        ))))
    }

    /// The client address, `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL clients connect to, `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// The last lines of the server's log (for error messages).
    fn log_tail(&self) -> String {
        let read = || -> io::Result<String> {
            let mut file = File::open(&self.log)?;
            let len = file.metadata()?.len();
            file.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL)))?;
            let mut text = String::new();
            file.read_to_string(&mut text)?;
            Ok(text)
        };
        match read() {
            Ok(text) if text.trim().is_empty() => "(empty)".to_owned(),
            Ok(text) => text.trim().replace('\n', " | "),
            Err(e) => format!("(unreadable: {e})"),
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        // Errors only mean the process is already gone.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Why one start attempt failed: worth retrying with another port, or not.
enum Started {
    Exited(BenchError),
    Failed(BenchError),
}

/// The `nats-server` binary: on `PATH`, else Debian's `/usr/sbin/nats-server`.
fn binary() -> BenchResult<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| candidate.is_file());
    on_path
        .or_else(|| Some(PathBuf::from(FALLBACK_BINARY)).filter(|p| p.is_file()))
        .ok_or_else(|| {
            BenchError::msg(
                "nats-server not found on PATH nor at /usr/sbin/nats-server: install it with \
                 `apt-get install -y nats-server` (Debian's 2.9 is what the NATS rows were \
                 measured with)",
            )
        })
}

/// A TCP port on `127.0.0.1` that was free a moment ago.
fn free_port() -> BenchResult<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_accepts_connections_and_is_gone_after_drop() {
        let server = NatsServer::start().expect("nats-server starts");
        let addr = server.addr();
        assert!(addr.ip().is_loopback());
        assert_eq!(server.url(), format!("nats://{addr}"));
        TcpStream::connect(addr).expect("accepts");
        let pid = server.child.id();
        drop(server);
        // Reaped: no /proc entry is left (not even a zombie).
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }
}
