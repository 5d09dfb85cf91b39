//! The planner: turns a validated [`dsl::Workflow`] and the user's target steps into a [`Plan`]:
//! which steps run, in which dependency order, with which resolved settings. It checks what only
//! the host can tell (a step larger than the whole CPU/memory budget is an error now, not a
//! deadlock later). Plans are rendered for `engine plan` and `engine graph` by `output::plan`.
//!
//! The planner never talks to Docker and never touches the filesystem. It never shows the values
//! of `env` or `secrets` (only their names), because plans are printed and pasted into issues.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::sync::Arc;

use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::Direction;

pub use crate::budget::HostBudget;

/// One step of a plan.
#[derive(Debug, Clone)]
pub struct PlannedStep {
    /// The step.
    pub step: Arc<dsl::Step>,
    /// Indexes into [`Plan::steps`] of this step's direct `needs`.
    pub needs: Vec<usize>,
}

/// The selected steps in a topological order (ties broken by file order).
#[derive(Debug, Clone)]
pub struct Plan {
    /// The whole workflow the steps were selected from.
    pub workflow: Arc<dsl::Workflow>,
    /// The selected steps (targets and what they need), in order.
    pub steps: Vec<PlannedStep>,
}

/// Why the steps could not be planned (exit 2).
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum PlanError {
    /// A target named on the command line is not a step.
    #[error("no step named `{name}` in the workflow")]
    #[diagnostic(help("{help}"))]
    UnknownTarget {
        /// The name given.
        name: String,
        /// What to do instead (the closest step names).
        help: String,
    },
    /// A step asks for more CPU or memory than the host has; it could never be scheduled.
    #[error(transparent)]
    #[diagnostic(transparent)]
    TooLarge(Box<dsl::Diagnostic>),
    /// The front end rejects cycles; this is the planner refusing to loop or panic if one slips
    /// through anyway.
    #[error("the steps {steps} need each other in a cycle")]
    #[diagnostic(help("remove one of the `needs` entries so that the steps form a chain"))]
    Cycle {
        /// The steps of the cycle, as a readable list.
        steps: String,
    },
    /// The front end rejects unknown `needs`; defensive for the same reason as `Cycle`.
    #[error("step `{step}` needs `{need}`, which is not a step of the workflow")]
    UnknownNeed {
        /// The step whose `needs` names it.
        step: String,
        /// The unknown name.
        need: String,
    },
}

/// Plan `targets` (all steps if empty) and everything they need.
pub(crate) fn plan(workflow: Arc<dsl::Workflow>, targets: &[String], budget: HostBudget) -> Result<Plan, PlanError> {
    let index: HashMap<&str, usize> = workflow.steps.iter().enumerate().map(|(i, s)| (s.name.as_str(), i)).collect();

    // Which steps (by file index) take part: the targets and everything they transitively need.
    let mut selected = vec![targets.is_empty(); workflow.steps.len()];
    let mut stack = Vec::new();
    for target in targets {
        match index.get(target.as_str()) {
            Some(&i) => stack.push(i),
            None => return Err(unknown_target(&workflow, target)),
        }
    }
    while let Some(i) = stack.pop() {
        if std::mem::replace(&mut selected[i], true) {
            continue;
        }
        for need in &workflow.steps[i].needs {
            stack.push(need_index(&index, &workflow.steps[i], need)?);
        }
    }

    // The graph of selected steps, nodes added in file order so node index order = file order.
    let mut graph: DiGraph<usize, ()> = DiGraph::new();
    let mut node_of: HashMap<usize, NodeIndex> = HashMap::new();
    for (i, _) in selected.iter().enumerate().filter(|(_, sel)| **sel) {
        node_of.insert(i, graph.add_node(i));
    }
    for (&i, &node) in &node_of {
        let step = &workflow.steps[i];
        for need in &step.needs {
            let n = need_index(&index, step, need)?;
            // Selection followed every need, so `n` is selected.
            if let Some(&from) = node_of.get(&n) {
                graph.update_edge(from, node, ());
            }
        }
    }

    let order = topological_file_order(&graph, &workflow)?;
    let position: HashMap<usize, usize> = order.iter().enumerate().map(|(pos, &i)| (i, pos)).collect();

    let mut steps = Vec::with_capacity(order.len());
    for &i in &order {
        let step = &workflow.steps[i];
        check_budget(&workflow, step, budget)?;
        let mut needs = Vec::new();
        for need in &step.needs {
            let p = position[&need_index(&index, step, need)?];
            if !needs.contains(&p) {
                needs.push(p);
            }
        }
        steps.push(PlannedStep { step: Arc::new(step.clone()), needs });
    }
    Ok(Plan { workflow, steps })
}

fn need_index(index: &HashMap<&str, usize>, step: &dsl::Step, need: &str) -> Result<usize, PlanError> {
    index.get(need).copied().ok_or_else(|| PlanError::UnknownNeed { step: step.name.clone(), need: need.to_string() })
}

/// Kahn's algorithm with a min-heap on file index: among the steps that are ready, the one written
/// first comes first, so plans are stable and read like the file.
fn topological_file_order(graph: &DiGraph<usize, ()>, workflow: &dsl::Workflow) -> Result<Vec<usize>, PlanError> {
    let mut indegree: Vec<usize> = graph.node_indices().map(|n| graph.neighbors_directed(n, Direction::Incoming).count()).collect();
    let mut ready: BinaryHeap<Reverse<usize>> =
        graph.node_indices().filter(|n| indegree[n.index()] == 0).map(|n| Reverse(n.index())).collect();
    let mut order = Vec::with_capacity(graph.node_count());
    while let Some(Reverse(n)) = ready.pop() {
        let node = NodeIndex::new(n);
        order.push(graph[node]);
        for next in graph.neighbors_directed(node, Direction::Outgoing) {
            indegree[next.index()] -= 1;
            if indegree[next.index()] == 0 {
                ready.push(Reverse(next.index()));
            }
        }
    }
    if order.len() == graph.node_count() {
        return Ok(order);
    }
    // Some steps were never freed: they (or what they need) form a cycle. Name the cycle's members.
    let cyclic: Vec<String> = petgraph::algo::tarjan_scc(graph)
        .into_iter()
        .find(|scc| scc.len() > 1 || scc.iter().any(|&n| graph.contains_edge(n, n)))
        .unwrap_or_default()
        .into_iter()
        .map(|n| graph[n])
        .collect::<BTreeSet<_>>()
        .into_iter()
        .map(|i| format!("`{}`", workflow.steps[i].name))
        .collect();
    Err(PlanError::Cycle { steps: cyclic.join(", ") })
}

fn unknown_target(workflow: &dsl::Workflow, name: &str) -> PlanError {
    let best = workflow
        .steps
        .iter()
        .map(|s| (strsim::jaro_winkler(name, &s.name), &s.name))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    let names: Vec<String> = workflow.steps.iter().map(|s| format!("`{}`", s.name)).collect();
    let list = if names.is_empty() { "the workflow has no steps".to_string() } else { format!("steps: {}", names.join(", ")) };
    let help = match best {
        Some((_, suggestion)) => format!("did you mean `{suggestion}`? {list}"),
        None => list,
    };
    PlanError::UnknownTarget { name: name.to_string(), help }
}

fn check_budget(workflow: &dsl::Workflow, step: &dsl::Step, budget: HostBudget) -> Result<(), PlanError> {
    let (what, asked, has, key) = if step.limits.millicpus > budget.millicpus {
        ("cpus", dsl::units::format_cpus(step.limits.millicpus), dsl::units::format_cpus(budget.millicpus), "limits.cpus")
    } else if step.limits.memory > budget.memory {
        ("memory", crate::units::fmt_size(step.limits.memory), crate::units::fmt_size(budget.memory), "limits.memory")
    } else {
        return Ok(());
    };
    let diagnostic = dsl::Diagnostic::new(
        &workflow.source,
        step.span,
        format!("step `{}` asks for {what} {asked} but the host has {has}; it could never start", step.name),
        format!("needs {what} {asked}"),
    )
    .with_help(format!("lower `{key}` of `{}` to at most {has}, or run it on a larger host", step.name));
    Err(PlanError::TooLarge(Box::new(diagnostic)))
}

/// Hand-built workflows for tests: the YAML front end is developed separately, and these tests
/// must not depend on it.
#[cfg(test)]
pub(crate) mod test_support {
    use std::collections::BTreeMap;
    use std::path::PathBuf;
    use std::sync::Arc;

    /// Builds a workflow whose source text has one line per step (`name:`), so spans are real.
    pub struct WorkflowBuilder {
        name: String,
        steps: Vec<dsl::Step>,
    }

    pub fn workflow(name: &str) -> WorkflowBuilder {
        WorkflowBuilder { name: name.into(), steps: Vec::new() }
    }

    pub fn step(name: &str) -> dsl::Step {
        dsl::Step::new(name, dsl::ImageRef::Reference("local/busybox:1".into()), dsl::Command::Shell(format!("echo {name}")))
    }

    impl WorkflowBuilder {
        /// A default step named `name` needing `needs`.
        pub fn step(self, name: &str, needs: &[&str]) -> Self {
            let mut s = step(name);
            s.needs = needs.iter().map(|n| n.to_string()).collect();
            self.with(s)
        }

        pub fn with(mut self, s: dsl::Step) -> Self {
            self.steps.push(s);
            self
        }

        pub fn build(self) -> Arc<dsl::Workflow> {
            let mut text = String::from("version: 1\nsteps:\n");
            let mut steps = self.steps;
            for (i, s) in steps.iter_mut().enumerate() {
                let offset = text.len() + 2;
                s.span = dsl::Span { offset, len: s.name.len(), line: i + 3, col: 3 };
                text.push_str(&format!("  {}:\n", s.name));
            }
            Arc::new(dsl::Workflow {
                name: self.name,
                source: Arc::new(dsl::SourceFile { path: PathBuf::from("workflow.yml"), text }),
                dir: PathBuf::from("."),
                images: BTreeMap::new(),
                steps,
                input_spans: BTreeMap::new(),
                modules: Vec::new(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{step, workflow};
    use super::*;

    const BIG: HostBudget = HostBudget { millicpus: 64_000, memory: 256 << 30 };

    fn names(plan: &Plan) -> Vec<&str> {
        plan.steps.iter().map(|s| s.step.name.as_str()).collect()
    }

    fn all(wf: Arc<dsl::Workflow>) -> Plan {
        plan(wf, &[], BIG).expect("plan")
    }

    #[test]
    fn topological_order_breaks_ties_by_file_order() {
        // `late` is written first but needs `zeta`, written last.
        let wf = workflow("w").step("late", &["zeta"]).step("b", &[]).step("a", &["b"]).step("zeta", &[]).build();
        let p = all(wf);
        assert_eq!(names(&p), ["b", "a", "zeta", "late"]);
        assert_eq!(p.steps[1].needs, vec![0]);
        assert_eq!(p.steps[3].needs, vec![2]);
    }

    #[test]
    fn targets_select_only_ancestors() {
        let wf = workflow("w")
            .step("fetch", &[])
            .step("left", &["fetch"])
            .step("right", &["fetch"])
            .step("join", &["left", "right"])
            .step("unrelated", &[])
            .step("after", &["join"])
            .build();
        let p = plan(wf, &["join".into()], BIG).unwrap();
        assert_eq!(names(&p), ["fetch", "left", "right", "join"]);
        assert_eq!(p.steps[3].needs, vec![1, 2]);
    }

    #[test]
    fn unknown_target_suggests_a_step() {
        let wf = workflow("w").step("compile", &[]).step("test", &["compile"]).build();
        match plan(wf, &["compil".into()], BIG) {
            Err(PlanError::UnknownTarget { name, help }) => {
                assert_eq!(name, "compil");
                assert_eq!(help, "did you mean `compile`? steps: `compile`, `test`");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn unknown_target_without_close_match_lists_steps() {
        let wf = workflow("w").step("compile", &[]).build();
        let err = plan(wf, &["xyz".into()], BIG).unwrap_err();
        assert_eq!(err.to_string(), "no step named `xyz` in the workflow");
        assert!(matches!(err, PlanError::UnknownTarget { help, .. } if help == "steps: `compile`"));
    }

    #[test]
    fn cycle_is_an_error_not_a_panic() {
        let wf = workflow("w").step("a", &["b"]).step("b", &["a"]).step("c", &[]).build();
        let err = plan(wf, &[], BIG).unwrap_err();
        assert_eq!(err.to_string(), "the steps `a`, `b` need each other in a cycle");
    }

    #[test]
    fn unknown_need_is_an_error_not_a_panic() {
        let wf = workflow("w").step("a", &["ghost"]).build();
        let err = plan(wf, &[], BIG).unwrap_err();
        assert_eq!(err.to_string(), "step `a` needs `ghost`, which is not a step of the workflow");
    }

    fn render_diagnostic(err: &PlanError) -> String {
        dsl::diagnostic::render(err, false)
    }

    #[test]
    fn too_large_memory_points_at_the_step() {
        let mut big = step("train");
        big.limits.memory = 64 << 30;
        let wf = workflow("w").step("prep", &[]).with(big).build();
        let budget = HostBudget { millicpus: 8000, memory: (23 << 30) + (512 << 20) };
        let err = plan(wf.clone(), &[], budget).unwrap_err();
        let PlanError::TooLarge(d) = &err else { panic!("unexpected {err:?}") };
        assert_eq!(d.span, wf.steps[1].span);
        assert_eq!(d.message, "step `train` asks for memory 64g but the host has 23.5g; it could never start");
        insta::assert_snapshot!(render_diagnostic(&err));
    }

    #[test]
    fn too_large_cpu_is_rejected() {
        let mut big = step("train");
        big.limits.millicpus = 16_000;
        let wf = workflow("w").with(big).build();
        let err = plan(wf, &[], HostBudget { millicpus: 4000, memory: 8 << 30 }).unwrap_err();
        let PlanError::TooLarge(d) = &err else { panic!("unexpected {err:?}") };
        assert_eq!(d.message, "step `train` asks for cpus 16 but the host has 4; it could never start");
    }

    #[test]
    fn a_step_outside_the_targets_may_be_too_large() {
        let mut big = step("train");
        big.limits.memory = 64 << 30;
        let wf = workflow("w").step("prep", &[]).with(big).build();
        let p = plan(wf, &["prep".into()], HostBudget { millicpus: 8000, memory: 8 << 30 }).unwrap();
        assert_eq!(names(&p), ["prep"]);
    }
}
