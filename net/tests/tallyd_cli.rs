//! The `tallyd` binary's command line. Also makes `cargo test` build `tallyd` before the
//! end-to-end tests in the tests crate run it.

use std::process::Command;

#[test]
fn help_lists_the_documented_flags() {
    let output = Command::new(env!("CARGO_BIN_EXE_tallyd"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for flag in ["--listen", "--data-dir", "--shards", "--unix-socket", "--log-level"] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}

#[test]
fn bad_flags_exit_non_zero_with_a_message() {
    let output = Command::new(env!("CARGO_BIN_EXE_tallyd"))
        .args(["--shards", "zero"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--shards"));
}
