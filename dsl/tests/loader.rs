//! The loader boundary: the `.wf` front end finds imported files only through the `Loader` its
//! caller supplies (here an in-memory map), and a refusal is a diagnostic at the `import` line.

mod common;

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use dsl::{ImportError, Loader, Policy, Source};

/// Files by name; `stdlib/NAME` is the library's. Records every request.
struct Memory {
    files: HashMap<&'static str, &'static str>,
    asked: RefCell<Vec<(String, PathBuf)>>,
}

impl Memory {
    fn new(files: &[(&'static str, &'static str)]) -> Memory {
        Memory { files: files.iter().copied().collect(), asked: RefCell::new(Vec::new()) }
    }
}

impl Loader for Memory {
    fn load(&self, import: &str, from: &Path) -> Result<Source, ImportError> {
        self.asked.borrow_mut().push((import.to_string(), from.to_path_buf()));
        match self.files.get(import) {
            Some(text) => Ok(Source { path: PathBuf::from("mem").join(import), id: PathBuf::from(import), text: text.to_string() }),
            None if import.starts_with("stdlib/") => Err(ImportError::NotInLibrary { import: import.to_string(), modules: Vec::new() }),
            None => Err(ImportError::Outside { import: import.to_string() }),
        }
    }
}

fn load(text: &str, loader: &Memory) -> Result<dsl::Workflow, String> {
    dsl::load_str_with(Path::new("/nowhere/w.wf"), text, &Policy::default(), loader).map_err(|e| common::render(&e))
}

const LIB: &str = "template t(x) { image \"local/busybox:1\" run \"echo ${x}\" }\n";

#[test]
fn imports_resolve_through_the_loader() {
    let loader =
        Memory::new(&[("lib/a.wf", "import \"stdlib/b.wf\" as b\ntemplate t(x) { image \"i\" run \"a ${x}\" }\n"), ("stdlib/b.wf", LIB)]);
    let wf = load("version 1\nimport \"lib/a.wf\" as a\nstep s = a.t(\"hi\")\n", &loader).unwrap();
    assert_eq!(wf.step("s").unwrap().command, dsl::Command::Shell("a hi".into()));
    // Nested imports are asked from the importing file's path, as the loader gave it.
    let asked = loader.asked.borrow().clone();
    assert_eq!(
        asked,
        [("lib/a.wf".to_string(), PathBuf::from("/nowhere/w.wf")), ("stdlib/b.wf".to_string(), PathBuf::from("mem/lib/a.wf"))]
    );
}

#[test]
fn a_refused_import_is_a_diagnostic_at_the_import_line() {
    let loader = Memory::new(&[]);
    let out = load("version 1\n\nimport \"../etc/x.wf\" as x\nstep s { image \"i\" run \"true\" }\n", &loader).unwrap_err();
    assert!(out.contains("/nowhere/w.wf:3:1: cannot import `../etc/x.wf`: it leaves the workflow's folder"), "{out}");
    let out = load("version 1\nimport \"stdlib/none.wf\" as n\nstep s { image \"i\" run \"true\" }\n", &loader).unwrap_err();
    assert!(out.contains("/nowhere/w.wf:2:1: cannot find the standard library for `stdlib/none.wf`"), "{out}");
}

#[test]
fn what_the_loader_returns_is_still_bounded_and_checked() {
    // Not a `.wf` file: refused before the loader is asked.
    let loader = Memory::new(&[("x.yml", LIB)]);
    let out = load("version 1\nimport \"x.yml\" as x\nstep s { image \"i\" run \"true\" }\n", &loader).unwrap_err();
    assert!(out.contains("w.wf:2:1: cannot import `x.yml`: only `.wf` files can be imported"), "{out}");
    assert!(loader.asked.borrow().is_empty());
    // A cycle through the loader's identities is found.
    let loader = Memory::new(&[("a.wf", "import \"b.wf\" as b\n"), ("b.wf", "import \"a.wf\" as a\n")]);
    let out = load("version 1\nimport \"a.wf\" as a\nstep s { image \"i\" run \"true\" }\n", &loader).unwrap_err();
    assert!(out.contains("mem/b.wf:1:1: import cycle: `a.wf` imports this file again"), "{out}");
    // A syntax error in an imported file points into that file, and at the import too.
    let loader = Memory::new(&[("bad.wf", "template t( {\n")]);
    let out = load("version 1\nimport \"bad.wf\" as b\nstep s { image \"i\" run \"true\" }\n", &loader).unwrap_err();
    assert!(out.contains("mem/bad.wf:1:"), "{out}");
    assert!(out.contains("w.wf:2:1: the import of `bad.wf` has errors"), "{out}");
}

#[test]
fn the_default_loader_has_no_library() {
    // The tests' loader (the engine's folders) has it.
    common::load("w.wf", "version 1\nimport \"stdlib/make.wf\" as m\nstep s { image \"i\" run \"true\" }\n");
    let e = dsl::load_str(Path::new("w.wf"), "version 1\nimport \"stdlib/make.wf\" as m\nstep s { image \"i\" run \"true\" }\n");
    let out = common::render(&e.unwrap_err());
    assert!(out.contains("w.wf:2:1: cannot find the standard library for `stdlib/make.wf`"), "{out}");
}
