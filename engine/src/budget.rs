//! What the host offers the steps: CPUs and memory. Below the planner, the scheduler and the
//! Docker executor, which all speak of it.

/// What the host offers the scheduler: the sum of what running steps may reserve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostBudget {
    /// CPUs, in thousandths of a CPU.
    pub millicpus: u64,
    /// Memory, in bytes.
    pub memory: u64,
}

impl HostBudget {
    /// No limit: for a dry run, where nothing is reserved.
    pub const UNLIMITED: HostBudget = HostBudget { millicpus: u64::MAX, memory: u64::MAX };
}

/// The CPUs and memory of this machine, for commands that do not talk to the daemon.
pub fn local_budget() -> HostBudget {
    let cpus = std::thread::available_parallelism().map(|n| n.get() as u64).unwrap_or(1);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map(|kib| kib * 1024)
        .unwrap_or(u64::MAX);
    HostBudget { millicpus: cpus * 1000, memory }
}
