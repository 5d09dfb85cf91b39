//! The example project of `stdlib/rust.wf`: a greeting with a unit test.

fn greeting(name: &str) -> String {
    format!("hello, {name}")
}

fn main() {
    let name = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "world".to_string());
    println!("{}", greeting(&name));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greets_by_name() {
        assert_eq!(greeting("rust"), "hello, rust");
    }
}
