//! Who owns a run: the engine process (pid, its start time, the host). Written into container
//! labels and into the run's temporary folder so that a later run can tell a dead engine's
//! leftovers from a live run's resources. The start time guards against pid reuse.

use std::fmt;

/// An engine process, identified across pid reuse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// Its process id.
    pub pid: u32,
    /// Process start time in clock ticks since boot (/proc/<pid>/stat field 22).
    pub start: u64,
    /// The hostname of the machine it runs on.
    pub host: String,
}

impl Owner {
    /// This process.
    pub fn current() -> Owner {
        let pid = std::process::id();
        Owner { pid, start: start_time(pid).unwrap_or(0), host: hostname() }
    }

    /// Parse the `pid start host` form written by `Display`.
    pub fn parse(s: &str) -> Option<Owner> {
        let mut it = s.split_whitespace();
        let pid = it.next()?.parse().ok()?;
        let start = it.next()?.parse().ok()?;
        let host = it.next()?.to_string();
        Some(Owner { pid, start, host })
    }

    /// True if the owning process still runs. Owners on another host are assumed alive: we cannot
    /// see their processes, and removing a live run's containers would be far worse than leaving
    /// a dead one's.
    pub fn is_alive(&self) -> bool {
        if self.host != hostname() {
            return true;
        }
        match start_time(self.pid) {
            Some(start) => start == self.start,
            None => false,
        }
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.pid, self.start, self.host)
    }
}

/// Start time of `pid` from /proc, or None if there is no such process.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses; fields after the last `)`
    // are fixed. Field 22 (starttime) is the 20th after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// This machine's hostname (`localhost` if it has none).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_process_is_alive_and_round_trips() {
        let me = Owner::current();
        assert!(me.start > 0);
        assert_eq!(Owner::parse(&me.to_string()), Some(me.clone()));
        assert!(me.is_alive());
    }

    #[test]
    fn reused_pid_or_dead_pid_is_not_alive() {
        let me = Owner::current();
        assert!(!Owner { start: me.start + 1, ..me.clone() }.is_alive());
        assert!(!Owner { pid: u32::MAX - 1, ..me }.is_alive());
    }
}
