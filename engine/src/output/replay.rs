//! `engine replay`'s words: the note when it starts, each step's verdict (`reproduced`, or
//! `differs` with one line per difference), the count, and the note when it is cancelled.

use crate::layers::compare::{Difference, Verdict};

/// Stderr, before the containers start: what is replayed as which run.
pub fn print_start(steps: usize, run_id: &str, workflow: &str, replay_id: &str) {
    eprintln!("replaying {steps} step{} of run {run_id} ({}) as {replay_id}", if steps == 1 { "" } else { "s" }, workflow.escape_debug());
}

/// Stderr: the replay was interrupted.
pub fn print_cancelled() {
    eprintln!("replay cancelled");
}

/// Stdout: every step's verdict in order, then `N reproduced, M differ(s)`.
pub fn print_verdicts(verdicts: &[(String, Verdict)]) {
    print!("{}", render_verdicts(verdicts));
}

/// [`print_verdicts`]'s text.
pub fn render_verdicts(verdicts: &[(String, Verdict)]) -> String {
    let width = verdicts.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (name, verdict) in verdicts {
        out.push_str(&report_line(name, width, verdict));
    }
    let reproduced = verdicts.iter().filter(|(_, v)| *v == Verdict::Reproduced).count();
    let differ = verdicts.len() - reproduced;
    out.push_str(&format!("{reproduced} reproduced, {differ} differ{}\n", if differ == 1 { "s" } else { "" }));
    out
}

/// The report of one step: `name  reproduced`, or `name  differs` with one line per difference.
pub fn report_line(name: &str, width: usize, verdict: &Verdict) -> String {
    match verdict {
        Verdict::Reproduced => format!("{name:<width$}  reproduced\n"),
        Verdict::Failed(why) => format!("{name:<width$}  differs: {why}\n"),
        Verdict::Differs(diffs) => {
            let mut s = format!("{name:<width$}  differs\n");
            for d in diffs {
                match d {
                    Difference::Content { path, recorded, replayed, diff } => {
                        s.push_str(&format!("    {path}: recorded sha256 {recorded}, replayed sha256 {replayed}\n"));
                        if let Some(diff) = diff {
                            for line in diff.lines() {
                                s.push_str(&format!("      {line}\n"));
                            }
                        }
                    }
                    Difference::Missing { path } => s.push_str(&format!("    {path}: recorded, not produced by the replay\n")),
                    Difference::Extra { path } => s.push_str(&format!("    {path}: produced by the replay, not recorded\n")),
                    Difference::Changed { path, recorded, replayed } => {
                        s.push_str(&format!("    {path}: recorded {recorded}, replayed {replayed}\n"))
                    }
                }
            }
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use cache::Digest;

    use super::*;

    #[test]
    fn a_difference_is_named_with_both_digests_under_its_step() {
        let diffs = vec![
            Difference::Missing { path: "gone".into() },
            Difference::Content {
                path: "stamp".into(),
                recorded: Digest::of(b"1\n"),
                replayed: Digest::of(b"2\n"),
                diff: Some("-1\n+2".into()),
            },
        ];
        let report = report_line("use", 3, &Verdict::Differs(diffs));
        assert!(report.starts_with("use  differs\n"), "{report}");
        assert!(report.contains("    gone: recorded, not produced by the replay\n"), "{report}");
        assert!(
            report.contains(&format!("stamp: recorded sha256 {}, replayed sha256 {}", Digest::of(b"1\n"), Digest::of(b"2\n"))),
            "{report}"
        );
        assert!(report.contains("      -1\n      +2\n"), "{report}");
    }

    #[test]
    fn verdicts_are_aligned_and_counted() {
        let text = render_verdicts(&[("a".into(), Verdict::Reproduced), ("long".into(), Verdict::Failed("exited with code 1".into()))]);
        assert_eq!(text, "a     reproduced\nlong  differs: exited with code 1\n1 reproduced, 1 differs\n");
    }
}
