//! End-to-end tests of the `e2train` binary.
use std::process::Command;

fn e2train() -> Command {
    Command::new(env!("CARGO_BIN_EXE_e2train"))
}

#[test]
fn version_names_the_git_revision() {
    let out = e2train().arg("--version").output().unwrap();
    assert!(out.status.success());
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.starts_with("e2train "), "{s}");
    assert!(s.contains("(git "), "{s}");
}
