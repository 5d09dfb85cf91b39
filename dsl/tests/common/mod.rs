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
    match dsl::load_str_with(Path::new(name), text, policy) {
        Ok(_) => panic!("{name} loaded but should not have"),
        Err(e) => render(&e),
    }
}

pub fn load(name: &str, text: &str) -> Workflow {
    match dsl::load_str(Path::new(name), text) {
        Ok(w) => w,
        Err(e) => panic!("{name} should load:\n{}", render(&e)),
    }
}
