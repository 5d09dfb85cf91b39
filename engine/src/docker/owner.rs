//! The owner of a container as Docker labels: [`crate::owner::Owner`] (pid, process start time,
//! host) written as `engine.pid`, `engine.pid.start`, `engine.host`, and read back so that
//! `cleanup` can tell a live run from one whose engine died.
//!
//! Must not talk to Docker or decide what gets removed.

use std::collections::HashMap;

use super::{LABEL_HOST, LABEL_PID, LABEL_PID_START};
use crate::owner::Owner;

/// The owner labels of this process.
pub fn owner_labels() -> HashMap<String, String> {
    let me = Owner::current();
    HashMap::from([
        (LABEL_PID.to_string(), me.pid.to_string()),
        (LABEL_PID_START.to_string(), me.start.to_string()),
        (LABEL_HOST.to_string(), me.host),
    ])
}

/// Whether the owner named by `labels` is known to be gone. Containers without readable owner
/// labels count as alive: removing a live run's containers is worse than leaving garbage.
pub fn owner_is_dead(labels: &HashMap<String, String>) -> bool {
    let (Some(host), Some(pid), Some(start)) = (labels.get(LABEL_HOST), labels.get(LABEL_PID), labels.get(LABEL_PID_START)) else {
        return false;
    };
    let (Ok(pid), Ok(start)) = (pid.parse(), start.parse()) else {
        return false;
    };
    !Owner { pid, start, host: host.clone() }.is_alive()
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
    fn foreign_host_or_missing_labels_are_kept() {
        let mut labels = owner_labels();
        labels.insert(LABEL_HOST.into(), "some-other-host".into());
        labels.insert(LABEL_PID_START.into(), "1".into());
        assert!(!owner_is_dead(&labels));
        assert!(!owner_is_dead(&HashMap::new()));
    }
}
