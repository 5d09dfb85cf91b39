//! The command line (clap). Only argument shapes and help texts live here; `main.rs` dispatches.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// The command line of `engine`.
#[derive(Debug, Parser)]
#[command(
    name = "engine",
    version,
    about = "Run workflows as DAGs of locked-down Docker containers",
    long_about = "Run workflows as DAGs of locked-down Docker containers.\n\n\
        A workflow (workflow.yml) names steps; each step runs in its own container with no network, \
        a read-only root, no capabilities, a non-root user, and CPU/memory/pids limits and a hard timeout. \
        Steps whose needs are met run in parallel.\n\n\
        Exit codes: 0 success, 1 a step failed, 2 invalid workflow or command line, \
        3 environment failure (no Docker daemon, image missing), 130 interrupted."
)]
pub struct Cli {
    /// The subcommand to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands of `engine`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a workflow: all steps, or the named steps and everything they need
    #[command(
        after_help = "Examples:\n  engine run                      # workflow.yml in the current directory\n  engine run ci.yml test --jobs 2 # `test` and what it needs\n  engine run --output json        # one JSON event per line"
    )]
    Run(RunArgs),
    /// Load and validate a workflow without running anything
    Check(CheckArgs),
    /// Show what would run, in which order, with the resolved settings of each step
    Plan(PlanArgs),
    /// Print the step graph (Graphviz dot or Mermaid)
    Graph(GraphArgs),
    /// Remove containers, volumes and temporary folders left by engines that died
    Clean,
    /// Inspect and maintain the step cache
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Print the workflow in the other syntax: YAML becomes .wf, .wf becomes YAML
    Convert {
        /// The workflow file (.yml/.yaml or .wf)
        file: PathBuf,
    },
    /// Format a .wf file canonically (in place), or check that it is formatted
    Fmt {
        /// The .wf file
        file: PathBuf,
        /// Do not write; exit 1 if the file is not formatted
        #[arg(long)]
        check: bool,
    },
    /// Pin every base image reference to its current image ID in engine.lock beside the workflow
    Lock {
        /// Workflow file [default: ./workflow.yml, then ./workflow.wf]
        file: Option<PathBuf>,
    },
    /// Build, list and prune the images defined under `images:`
    #[command(subcommand)]
    Images(ImagesCommand),
    /// List the recorded runs of the workflow in this folder (.engine/runs), show one, or prune them
    #[command(
        after_help = "Examples:\n  engine runs                 # id, time, workflow, result, steps run/cached\n  engine runs show latest     # one run in detail\n  engine runs show 6b0457     # an unambiguous prefix of a run id\n  engine runs prune --keep 10 # remove all but the newest 10 records"
    )]
    Runs {
        /// `show` or `prune`; without one, list the runs.
        #[command(subcommand)]
        command: Option<RunsCommand>,
        /// Where the records are.
        #[command(flatten)]
        dir: RecordsDir,
        /// `json`: one summary object per run on one line; with `show`, the record itself
        #[arg(long, value_enum, default_value_t = OutputFormat::Plain, global = true)]
        output: OutputFormat,
    },
    /// Re-execute a recorded run's steps from the recorded inputs and images, and compare outputs
    #[command(after_help = "Each step runs again, bypassing the cache, in a fresh container from the recorded image ID, \
        with its inputs and the outputs of the steps it needs taken from the cache store (not from the \
        working tree). Prints `reproduced` or `differs` per step, and for each differing file its path \
        and both digests. Exit 0 when everything reproduces, 1 otherwise, 3 when an input or image is gone.")]
    Replay(ReplayArgs),
    /// Print the SLSA provenance (an in-toto Statement) of a recorded run's exported outputs
    Provenance {
        /// Run id (or an unambiguous prefix), or `latest`
        id: String,
        /// Where the records are.
        #[command(flatten)]
        dir: RecordsDir,
        /// The cache store holding the input manifests the record names
        #[command(flatten)]
        cache: CacheDirArg,
    },
}

/// The subcommands of `engine runs`.
#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// Show one run: its steps, keys, images, outputs and logs
    Show {
        /// Run id (or an unambiguous prefix), or `latest`
        id: String,
    },
    /// Remove old run records (as after every run, with these limits); never a running engine's
    #[command(after_help = "Removes every record but the newest N, and every record that started longer than DURATION ago. \
        After each run the engine does the same with the defaults (keep 100, older than 30 days), sparing that run.")]
    Prune {
        /// Keep the newest N records
        #[arg(long, value_name = "N", default_value_t = crate::record::DEFAULT_KEEP)]
        keep: usize,
        /// Remove records that started longer ago than this (`30days`, `12h`, `1w`)
        #[arg(long, value_name = "DURATION", default_value = "30days")]
        older_than: humantime::Duration,
    },
}

/// Where the run records are: `.engine/runs` beside the workflow.
#[derive(Debug, Args)]
pub struct RecordsDir {
    /// The folder holding the workflow (and its .engine/runs) [default: the current directory]
    #[arg(long = "dir", short = 'C', value_name = "DIR", default_value = ".", global = true)]
    pub dir: PathBuf,
}

/// The arguments of `engine replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Run id (or an unambiguous prefix), or `latest`
    pub id: String,
    /// Replay only these steps [default: every step that succeeded or was cached]
    #[arg(value_name = "STEP")]
    pub steps: Vec<String>,
    /// Maximum number of steps running at once [default: the recorded run's]
    #[arg(long, short = 'j', value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub jobs: Option<u32>,
    /// The cache store the recorded inputs and outputs are read from.
    #[command(flatten)]
    pub cache: CacheDirArg,
    /// Where the records are.
    #[command(flatten)]
    pub dir: RecordsDir,
    /// Today's operator policy: every recorded step is checked against it (and the built-in
    /// rules) before anything starts, as a workflow step would be.
    #[command(flatten)]
    pub policy: PolicyArg,
}

/// The subcommands of `engine images`.
#[derive(Debug, Subcommand)]
pub enum ImagesCommand {
    /// Build the workflow's images (all, or the named ones); unchanged stages are reused
    Build {
        /// Workflow file (optional), then image names
        #[arg(value_name = "FILE|NAME")]
        words: Vec<String>,
        /// Rebuild every stage instead of reusing stage images with the same key
        #[arg(long)]
        no_cache: bool,
        /// The operator policy binds image builds too (root stages, networks, base images, limits)
        #[command(flatten)]
        policy: PolicyArg,
    },
    /// List the images the engine built, with their keys and sizes
    Ls,
    /// Remove the images the engine built for this workflow (its tags; an image another workflow
    /// also tags stays), or with --all every image the engine built on the daemon; they are
    /// rebuilt, or found again, on demand
    Prune {
        /// Workflow file [default: ./workflow.yml, then ./workflow.wf]
        #[arg(conflicts_with = "all")]
        file: Option<PathBuf>,
        /// Every engine-built image on the daemon, of every workflow (and the stage images)
        #[arg(long)]
        all: bool,
    },
    /// Turn a root folder (debootstrap, busybox-static) into an image: the offline way to a base
    Import {
        /// The root folder
        rootfs: PathBuf,
        /// The reference to tag it as, e.g. local/debian:bookworm
        reference: String,
    },
}

/// The subcommands of `engine cache`.
#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// List cache entries, most recently used first
    Ls(CacheDirArg),
    /// Remove least-recently-used entries until the cache fits in SIZE (e.g. 5G)
    Gc {
        /// Largest total size to keep (b, k, m, g, t; binary)
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        max_size: u64,
        /// The cache directory.
        #[command(flatten)]
        dir: CacheDirArg,
    },
    /// Re-hash every stored blob; report and drop corrupt ones
    Verify(CacheDirArg),
    /// Print the full key breakdown of a step, and whether it would come from the cache
    Explain {
        /// Workflow file (optional), then the step
        #[arg(value_name = "[FILE] STEP", required = true, num_args = 1..=2)]
        words: Vec<String>,
        /// The cache directory.
        #[command(flatten)]
        dir: CacheDirArg,
        /// The operator policy (its `remote_cache:`).
        #[command(flatten)]
        policy: PolicyArg,
        /// The remote cache.
        #[command(flatten)]
        remote: RemoteCacheArgs,
    },
    /// Upload local cache entries to the remote cache (every entry, or the given keys)
    #[command(
        after_help = "Exit 0 when every entry was uploaded, 1 when one could not be, 2 for a bad key or no remote cache, 3 when the registry is unavailable."
    )]
    Push(CacheTransferArgs),
    /// Download entries of the remote cache into the local store (every entry, or the given keys)
    #[command(
        after_help = "Exit 0 when every entry was downloaded, 1 when one was missing or damaged, 2 for a bad key or no remote cache, 3 when the registry is unavailable."
    )]
    Pull(CacheTransferArgs),
}

/// The arguments of `engine cache push` and `engine cache pull`.
#[derive(Debug, Args)]
pub struct CacheTransferArgs {
    /// Action keys (64 hex digits, `sha256:` optional) [default: every entry]
    #[arg(value_name = "KEY")]
    pub keys: Vec<String>,
    /// The cache directory.
    #[command(flatten)]
    pub dir: CacheDirArg,
    /// The operator policy (its `remote_cache:`).
    #[command(flatten)]
    pub policy: PolicyArg,
    /// The remote cache.
    #[command(flatten)]
    pub remote: RemoteCacheArgs,
}

/// `--cache-dir`: where the step cache is.
#[derive(Debug, Args)]
pub struct CacheDirArg {
    /// Cache directory [default: $ENGINE_CACHE_DIR, else the user's cache directory + /engine]
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
}

impl CacheDirArg {
    /// The directory given, else the default ([`cache::Store::default_dir`]).
    pub fn resolve(&self) -> PathBuf {
        self.cache_dir.clone().unwrap_or_else(cache::Store::default_dir)
    }
}

fn parse_size(s: &str) -> Result<u64, String> {
    dsl::units::parse_size(s).ok_or_else(|| format!("invalid size `{s}`: {}", dsl::units::SIZE_HELP))
}

/// `[FILE] [STEP...]`: the first word is the workflow file if it exists or ends in
/// .yml/.yaml/.wf; otherwise every word is a step and the file is found in the current directory.
#[derive(Debug, Args)]
pub struct Target {
    /// Workflow file, then step names. FILE defaults to ./workflow.yml, then ./workflow.wf
    #[arg(value_name = "FILE|STEP")]
    pub words: Vec<String>,
}

/// `--policy`: the operator policy file.
#[derive(Debug, Args)]
pub struct PolicyArg {
    /// Operator policy capping what workflows may ask for (limits, networks, images, root)
    #[arg(long, env = "ENGINE_POLICY", value_name = "FILE")]
    pub policy: Option<PathBuf>,
}

/// `--remote-cache` and its companions: the shared cache in an OCI registry (see
/// docs/workflow.md, "Remote cache", for how they meet the policy's `remote_cache:`).
#[derive(Debug, Args, Default, Clone)]
pub struct RemoteCacheArgs {
    /// Share the step cache through an OCI registry: oci://HOST[:PORT]/REPO [default: the policy's `remote_cache`]
    #[arg(long, env = "ENGINE_REMOTE_CACHE", value_name = "URL")]
    pub remote_cache: Option<String>,
    /// What the run may do with the remote cache [default: the policy's mode, else readwrite]
    #[arg(long, env = "ENGINE_REMOTE_CACHE_MODE", value_name = "MODE", value_parser = ["read", "write", "readwrite"])]
    pub remote_cache_mode: Option<String>,
    /// Allow plain HTTP to a registry that is not on a loopback address
    #[arg(long)]
    pub remote_cache_insecure: bool,
}

/// The arguments of `engine run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The workflow file and the steps to run.
    #[command(flatten)]
    pub target: Target,
    /// Maximum number of steps running at once [default: number of CPUs]
    #[arg(long, short = 'j', value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub jobs: Option<u32>,
    /// After a failure, keep running every step whose needs succeeded
    #[arg(long)]
    pub keep_going: bool,
    /// Execute every step even if a cached result exists (results are still stored)
    #[arg(long)]
    pub no_cache: bool,
    /// The cache directory.
    #[command(flatten)]
    pub cache: CacheDirArg,
    /// Where outputs are exported, as <DIR>/<step>/<path> [default: .engine/out beside the workflow]
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Progress format: prefixed log lines and a summary, or one JSON event per line
    #[arg(long, value_enum, default_value_t = OutputFormat::Plain)]
    pub output: OutputFormat,
    /// The operator policy.
    #[command(flatten)]
    pub policy: PolicyArg,
    /// The remote cache.
    #[command(flatten)]
    pub remote: RemoteCacheArgs,
}

/// The arguments of `engine check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Workflow file [default: ./workflow.yml, then ./workflow.wf]
    pub file: Option<PathBuf>,
    /// The operator policy.
    #[command(flatten)]
    pub policy: PolicyArg,
}

/// The arguments of `engine plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The workflow file and the steps to plan.
    #[command(flatten)]
    pub target: Target,
    /// Show every step as `run`, as `engine run --no-cache` would
    #[arg(long)]
    pub no_cache: bool,
    /// The cache directory.
    #[command(flatten)]
    pub cache: CacheDirArg,
    /// Plan format: text (each step in order with its settings), or one JSON document
    #[arg(long, value_enum, default_value_t = OutputFormat::Plain)]
    pub output: OutputFormat,
    /// The operator policy.
    #[command(flatten)]
    pub policy: PolicyArg,
    /// The remote cache (asked with one HEAD per step the local store lacks).
    #[command(flatten)]
    pub remote: RemoteCacheArgs,
}

/// The arguments of `engine graph`.
#[derive(Debug, Args)]
pub struct GraphArgs {
    /// Workflow file [default: ./workflow.yml, then ./workflow.wf]
    pub file: Option<PathBuf>,
    /// Graph syntax
    #[arg(long, value_enum, default_value_t = GraphFormat::Dot)]
    pub format: GraphFormat,
}

/// `--output`: `plain`, text for people, or `json`. (The variants carry no doc comments: clap
/// would turn them into help text and change the layout of `--help`.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[allow(missing_docs)]
pub enum OutputFormat {
    Plain,
    Json,
}

/// `--format` of `engine graph`: `dot` (Graphviz) or `mermaid` (a Mermaid flowchart). (No doc
/// comments on the variants, as for [`OutputFormat`].)
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[allow(missing_docs)]
pub enum GraphFormat {
    Dot,
    Mermaid,
}

impl Target {
    /// Split the words into the workflow file and the target steps.
    pub fn split(&self) -> (Option<PathBuf>, Vec<String>) {
        match self.words.split_first() {
            Some((first, rest)) if looks_like_file(first) => (Some(PathBuf::from(first)), rest.to_vec()),
            _ => (None, self.words.clone()),
        }
    }
}

fn looks_like_file(word: &str) -> bool {
    let p = std::path::Path::new(word);
    p.is_file() || [".yml", ".yaml", ".wf"].iter().any(|ext| word.ends_with(ext)) || word.contains('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn first_word_is_a_file_only_when_it_looks_like_one() {
        let t = |w: &[&str]| Target { words: w.iter().map(|s| s.to_string()).collect() }.split();
        assert_eq!(t(&["ci.yml", "join"]), (Some("ci.yml".into()), vec!["join".to_string()]));
        assert_eq!(t(&["join", "test"]), (None, vec!["join".to_string(), "test".to_string()]));
        assert_eq!(t(&["dir/flow.wf"]), (Some("dir/flow.wf".into()), vec![]));
        assert_eq!(t(&[]), (None, vec![]));
    }
}
