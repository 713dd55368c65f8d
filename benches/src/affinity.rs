//! CPU placement of the two sides' threads.
//!
//! On small VMs the round-trip time is **bimodal** depending on where the scheduler puts
//! the two threads: when both share one vCPU a hop is a plain context switch; when they sit
//! on different vCPUs every hop has to wake an idle vCPU (an inter-processor interrupt and a
//! halt exit to the hypervisor), which costs several times more. Left to the scheduler, a
//! run can land in either mode, or switch mid-run, and ratios between scenarios stop
//! meaning anything. So the harness pins the threads; see [`Placement`].

use crate::error::{BenchError, BenchResult};

/// Where the server-side and client-side threads of a scenario run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Placement {
    /// Server on the first allowed CPU, client on the second: like two processes on two
    /// cores, every hop crosses CPUs. The default; needs at least 2 allowed CPUs.
    #[default]
    Split,
    /// Both sides on the first allowed CPU: hops are context switches on one core
    /// (lower, steadier numbers, but not what two separate cores see).
    Same,
    /// No pinning: the scheduler decides (numbers may switch between the two modes).
    Any,
}

impl Placement {
    /// Name as used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Split => "split",
            Self::Same => "same",
            Self::Any => "any",
        }
    }

    /// E.g. `split (server on CPU 0, client on CPU 1)`; just the name if the CPUs cannot be
    /// determined.
    pub fn describe(self) -> String {
        let cpu = |c: Option<usize>| c.map_or_else(|| "any CPU".to_owned(), |c| format!("CPU {c}"));
        match self.cpus() {
            Ok((server, client)) => format!(
                "{} (server on {}, client on {})",
                self.name(),
                cpu(server),
                cpu(client)
            ),
            Err(_) => self.name().to_owned(),
        }
    }

    /// CPUs to pin `(server, client)` to; `None` = not pinned.
    pub fn cpus(self) -> BenchResult<(Option<usize>, Option<usize>)> {
        match self {
            Self::Any => Ok((None, None)),
            Self::Same => {
                let cpus = allowed_cpus()?;
                let first = *cpus
                    .first()
                    .ok_or_else(|| BenchError::msg("no CPU in the affinity mask"))?;
                Ok((Some(first), Some(first)))
            }
            Self::Split => match allowed_cpus()?.as_slice() {
                [server, client, ..] => Ok((Some(*server), Some(*client))),
                _ => Err(BenchError::msg(
                    "--placement split needs 2 allowed CPUs; use --placement same",
                )),
            },
        }
    }
}

/// CPUs the calling thread may run on, ascending.
#[cfg(target_os = "linux")]
pub fn allowed_cpus() -> BenchResult<Vec<usize>> {
    // SAFETY: `cpu_set_t` is plain data for which all-zeroes is a valid (empty) set;
    // `sched_getaffinity` writes at most `size_of::<cpu_set_t>()` bytes into it, and
    // `CPU_ISSET` only reads within it (indices below `CPU_SETSIZE`).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        let max = usize::try_from(libc::CPU_SETSIZE).unwrap_or(0);
        Ok((0..max).filter(|&cpu| libc::CPU_ISSET(cpu, &set)).collect())
    }
}

/// Pins the calling thread to `cpu`.
#[cfg(target_os = "linux")]
pub fn pin_current_thread(cpu: usize) -> BenchResult<()> {
    let max = usize::try_from(libc::CPU_SETSIZE).unwrap_or(0);
    if cpu >= max {
        return Err(BenchError::msg(format!("CPU {cpu} is out of range")));
    }
    // SAFETY: as above; `cpu < CPU_SETSIZE` was checked, and `sched_setaffinity` only reads
    // the set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
    }
    Ok(())
}

/// CPUs the calling thread may run on (unknown on this platform: an error).
#[cfg(not(target_os = "linux"))]
pub fn allowed_cpus() -> BenchResult<Vec<usize>> {
    Err(BenchError::msg(
        "CPU pinning is only implemented on Linux; use --placement any",
    ))
}

/// Pins the calling thread (not implemented on this platform: an error).
#[cfg(not(target_os = "linux"))]
pub fn pin_current_thread(_cpu: usize) -> BenchResult<()> {
    Err(BenchError::msg(
        "CPU pinning is only implemented on Linux; use --placement any",
    ))
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn pins_a_thread_to_an_allowed_cpu() {
        let cpus = allowed_cpus().expect("affinity mask");
        assert!(!cpus.is_empty());
        let first = cpus[0];
        std::thread::spawn(move || {
            pin_current_thread(first).expect("pin");
            assert_eq!(allowed_cpus().expect("mask"), vec![first]);
        })
        .join()
        .expect("thread");
        assert_eq!(Placement::Any.cpus().expect("any"), (None, None));
        assert_eq!(
            Placement::Same.cpus().expect("same"),
            (Some(first), Some(first))
        );
    }
}
