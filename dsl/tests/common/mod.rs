//! Shared helpers for the integration tests.
#![allow(dead_code)]

use std::path::Path;

use dsl::{LoadError, Policy, Workflow};

/// Renders an error the way the engine shows it, without colours and at a fixed width.
pub fn render(err: &LoadError) -> String {
    dsl::diagnostic::render(err, false)
}

/// Loads `text` as `dir/name` and returns the rendered errors; panics if it loads.
pub fn errors(name: &str, text: &str) -> String {
    errors_with(name, text, &Policy::default())
}

pub fn errors_with(name: &str, text: &str, policy: &Policy) -> String {
    match dsl::load_str_with(Path::new(name), text, policy, &loader(Path::new(name))) {
        Ok(_) => panic!("{name} loaded but should not have"),
        Err(e) => render(&e),
    }
}

pub fn load(name: &str, text: &str) -> Workflow {
    match dsl::load_str_with(Path::new(name), text, &Policy::default(), &loader(Path::new(name))) {
        Ok(w) => w,
        Err(e) => panic!("{name} should load:\n{}", render(&e)),
    }
}

/// The loader the engine binary supplies, for a workflow at `path`: imports relative to it,
/// `stdlib/NAME` in the repository's `stdlib-workflows/`.
pub fn loader(path: &Path) -> dsl::FsLoader {
    dsl::FsLoader::for_workflow(path).with_library([Path::new(env!("CARGO_MANIFEST_DIR")).join("../stdlib-workflows")])
}

/// A file under `dsl/tests/fixtures`.
pub fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// The IR as JSON without spans and source paths, so that two syntaxes can be compared.
pub fn ir(wf: &Workflow) -> serde_json::Value {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                m.remove("span");
                m.remove("spans");
                m.values_mut().for_each(strip);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut v = serde_json::to_value(wf).expect("the IR serialises");
    strip(&mut v);
    v
}
