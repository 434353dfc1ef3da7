//! Keeps testkit/README.md honest: its worked example must be exactly the code of
//! tests/file_log_store.rs, which CI runs against the log-store suite.

#[test]
fn readme_quotes_the_worked_example_exactly() {
    let readme = include_str!("../README.md");
    let code = include_str!("file_log_store.rs");
    let quoted = format!("```rust\n{code}```");
    assert!(
        readme.contains(&quoted),
        "testkit/README.md no longer quotes tests/file_log_store.rs verbatim; update the README"
    );
}
