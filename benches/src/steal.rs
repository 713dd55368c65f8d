//! CPU time the hypervisor gave to other guests while this VM wanted it ("steal", from
//! `/proc/stat`).
//!
//! On a shared VM a run can lose much of its CPU to other tenants without any sign in the
//! threads' own statistics: a thread that is not given a CPU it could run on is neither
//! running nor waiting on a run queue in the guest's eyes. A run of `fixed-load publish` that
//! made a quarter of its usual rate had about 38 % of the CPUs' time taken, and runs at the
//! usual rate under 1 %: a figure far from the others is explained by this before anything
//! else. `shoal-bench` prints it after every run and `fixed-load` after its timed part.
//!
//! ```
//! use shoal_benches::steal::CpuTimes;
//!
//! let before = CpuTimes::parse("cpu  100 0 50 800 0 0 0 50 0 0\n").unwrap();
//! let after = CpuTimes::parse("cpu  150 0 70 850 0 0 0 130 0 0\n").unwrap();
//! assert_eq!(after.stolen_share_since(&before), Some(40.0));
//! ```

/// The time all CPUs spent so far, and how much of it the hypervisor took, in the kernel's
/// ticks (`USER_HZ`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuTimes {
    total: u64,
    stolen: u64,
}

impl CpuTimes {
    /// The times now. `None` where `/proc/stat` cannot be read (not Linux).
    pub fn now() -> Option<Self> {
        Self::parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    /// The times in the text of `/proc/stat`: its `cpu` line sums every CPU's user, nice,
    /// system, idle, iowait, irq, softirq and steal ticks (guest time is counted in user and
    /// nice already). `None` without that line, or with fewer than eight numbers in it.
    pub fn parse(stat: &str) -> Option<Self> {
        let line = stat
            .lines()
            .find(|l| l.split_whitespace().next() == Some("cpu"))?;
        let ticks: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        (ticks.len() == 8).then(|| Self {
            total: ticks.iter().sum(),
            stolen: ticks[7],
        })
    }

    /// The percentage of the CPUs' time since `earlier` that the hypervisor took. `None` if no
    /// tick passed.
    pub fn stolen_share_since(&self, earlier: &Self) -> Option<f64> {
        let total = self.total.checked_sub(earlier.total).filter(|&t| t > 0)?;
        let stolen = self.stolen.saturating_sub(earlier.stolen);
        Some(stolen as f64 * 100.0 / total as f64)
    }
}

/// `"steal 12.5 % of the CPUs' time"`: the share since `earlier`, for a line that reports a
/// run. `None` where that is not known.
pub fn stolen_since(earlier: Option<&CpuTimes>) -> Option<String> {
    let share = CpuTimes::now()?.stolen_share_since(earlier?)?;
    Some(format!("steal {share:.1} % of the CPUs' time"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_line_is_read_without_guest_time_and_the_per_cpu_lines_are_not() {
        // Guest time (the last two numbers) is counted in user and nice already.
        let stat = "cpu  10 1 5 80 2 0 1 3 7 9\ncpu0 5 0 2 40 1 0 0 2 0 0\nintr 12345\n";
        let times = CpuTimes::parse(stat).expect("a cpu line");
        assert_eq!(
            times,
            CpuTimes {
                total: 102,
                stolen: 3
            }
        );
    }

    #[test]
    fn a_short_or_missing_cpu_line_is_no_reading() {
        assert_eq!(CpuTimes::parse("cpu  1 2 3 4 5 6 7\n"), None);
        assert_eq!(CpuTimes::parse("cpu0 1 2 3 4 5 6 7 8\n"), None);
        assert_eq!(CpuTimes::parse("cpu  1 2 x 4 5 6 7 8\n"), None);
    }

    #[test]
    fn no_tick_passed_is_no_share() {
        let times = CpuTimes::parse("cpu  1 2 3 4 5 6 7 8\n").expect("a cpu line");
        assert_eq!(times.stolen_share_since(&times), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn linux_has_a_reading_whose_steal_moves_forward() {
        // (The total may go back: the kernel's iowait count can.)
        let first = CpuTimes::now().expect("/proc/stat has a cpu line");
        let later = CpuTimes::now().expect("/proc/stat has a cpu line");
        assert!(first.total > 0, "{first:?}");
        assert!(later.stolen >= first.stolen, "{first:?} then {later:?}");
    }
}
