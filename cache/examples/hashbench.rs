//! Micro-benchmark of input hashing: `cargo run --release -p cache --example hashbench -- DIR`.
//! Hashes every file under DIR (skipping `.git`) cold, with an empty stat cache in a temporary
//! cache directory, then again warm from the saved stat cache, as a no-op re-key would.
//! Prints one JSON object per line.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use cache::hash::{files_read, hash_inputs, StatCache};
use cache::InputEntry;

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1) else {
        eprintln!("usage: hashbench DIR");
        return ExitCode::from(2);
    };
    match run(Path::new(&dir)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hashbench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let mut paths = Vec::new();
    let walk = walkdir::WalkDir::new(dir).into_iter().filter_entry(|e| e.file_name() != ".git");
    for entry in walk {
        let entry = entry?;
        if entry.file_type().is_dir() {
            continue;
        }
        let rel = entry.path().strip_prefix(dir)?;
        let rel = rel.to_str().ok_or_else(|| format!("not UTF-8: {}", rel.display()))?;
        paths.push(rel.replace(std::path::MAIN_SEPARATOR, "/"));
    }
    println!("{{\"files\": {}}}", paths.len());

    let cache_dir = tempfile::tempdir()?;
    let cold = timed_pass("cold", cache_dir.path(), dir, &paths)?;
    let warm = timed_pass("warm", cache_dir.path(), dir, &paths)?;
    if warm != cold {
        return Err("warm digests differ from cold ones".into());
    }
    Ok(())
}

/// Load the stat cache, hash, save, as one engine run would; prints `<label>_ms` and files read.
fn timed_pass(label: &str, cache_dir: &Path, dir: &Path, paths: &[String]) -> std::io::Result<Vec<InputEntry>> {
    let start = Instant::now();
    let mut stat = StatCache::load(cache_dir, dir);
    let entries = hash_inputs(dir, paths, &mut stat)?;
    stat.save()?;
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    println!("{{\"{label}_ms\": {ms:.1}, \"{label}_files_read\": {}}}", files_read(&stat));
    Ok(entries)
}
