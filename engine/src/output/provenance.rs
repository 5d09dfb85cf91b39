//! `engine provenance`: the statement `provenance::command` returns, as pretty JSON and a
//! newline on stdout.

/// The statement as printed: pretty JSON and a newline.
pub fn render(statement: &serde_json::Value) -> String {
    // A `Value` always serialises.
    let text = serde_json::to_string_pretty(statement).unwrap_or_default();
    format!("{text}\n")
}

/// Prints [`render`] on stdout.
pub fn print(statement: &serde_json::Value) {
    print!("{}", render(statement));
}
