//! Who owns a container: this engine process, identified by pid, process start time and host
//! name, so that `cleanup` can tell a live run from one whose engine died (pid reuse included).
//!
//! Reads /proc only; must not talk to Docker or decide what gets removed.

use std::collections::HashMap;

use super::{LABEL_HOST, LABEL_PID, LABEL_PID_START};

/// The start time of process `pid` in clock ticks since boot (field 22 of /proc/<pid>/stat),
/// or `None` when the process does not exist.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: fields after it are
    // counted from the last `)`. Field 3 is the first after it, so field 22 is the 20th.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::from("unknown");
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// The owner labels of this process.
pub fn owner_labels() -> HashMap<String, String> {
    let pid = std::process::id();
    let start = process_start_time(pid).unwrap_or(0);
    HashMap::from([
        (LABEL_PID.to_string(), pid.to_string()),
        (LABEL_PID_START.to_string(), start.to_string()),
        (LABEL_HOST.to_string(), hostname()),
    ])
}

/// Whether the owner named by `labels` is known to be gone: same host as us, and its pid is not
/// running or was reused (start time differs). Unknown or foreign owners count as alive, because
/// removing a live run's containers is worse than leaving garbage.
pub fn owner_is_dead(labels: &HashMap<String, String>) -> bool {
    let (Some(host), Some(pid), Some(start)) = (labels.get(LABEL_HOST), labels.get(LABEL_PID), labels.get(LABEL_PID_START))
    else {
        return false;
    };
    if *host != hostname() {
        return false;
    }
    let (Ok(pid), Ok(start)) = (pid.parse::<u32>(), start.parse::<u64>()) else {
        return false;
    };
    match process_start_time(pid) {
        None => true,
        Some(actual) => actual != start,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive() {
        assert!(!owner_is_dead(&owner_labels()));
    }

    #[test]
    fn other_start_time_is_dead() {
        let mut labels = owner_labels();
        labels.insert(LABEL_PID_START.into(), "1".into());
        assert!(owner_is_dead(&labels));
    }

    #[test]
    fn foreign_host_is_kept() {
        let mut labels = owner_labels();
        labels.insert(LABEL_HOST.into(), "elsewhere.invalid".into());
        labels.insert(LABEL_PID_START.into(), "1".into());
        assert!(!owner_is_dead(&labels));
    }
}
