//! The example project of `stdlib/rust.wf`: a greeting, with a unit test, a doctest and a
//! dependency from crates.io (`itoa`).

/// A greeting for `name`, numbered.
///
/// ```
/// assert_eq!(hello::greeting("rust", 7), "hello #7, rust");
/// ```
pub fn greeting(name: &str, n: u32) -> String {
    let mut number = itoa::Buffer::new();
    format!("hello #{}, {name}", number.format(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greets_by_name() {
        assert_eq!(greeting("rust", 1), "hello #1, rust");
    }
}
