//! `DATA_DIR/node` against the flags (issue 11): a node whose file says one role refuses to start
//! with flags that say the other, names the file and the flags that match, and starts once
//! `--reset-role` lets the flags win. A replica started under another primary address than its
//! file's starts (the address is advisory) and the file takes the flag's address.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use tally_tests::ports::free_block;
use tally_tests::{tallyd_path, DataDir, Launch, Server};

/// How long a refused start may take to exit.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(30);

fn write_node_file(dir: &Path, role: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("node"),
        format!("id 00000000000000000000000000000abc\nrole {role}\n"),
    )
    .unwrap();
}

fn node_file_role(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join("node")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("role "))
        .unwrap_or_else(|| panic!("no role line in {text:?}"))
        .to_owned()
}

/// Runs tallyd with `args` on `dir` and expects it to exit non-zero before serving; returns its
/// stderr.
fn refused(dir: &Path, args: &[String]) -> String {
    let mut child = Command::new(tallyd_path())
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tallyd");
    let deadline = std::time::Instant::now() + REFUSAL_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("tallyd with {args:?} did not exit within {REFUSAL_TIMEOUT:?}: it should refuse to start");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!status.success(), "tallyd {args:?} started: {stdout}{stderr}");
    assert!(
        !stdout.contains("tallyd ready"),
        "it must refuse before serving: {stdout}"
    );
    stderr
}

fn addr(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

#[test]
fn flags_that_contradict_the_node_file_refuse_to_start_until_reset_role() {
    let ports = free_block(12);
    let (me, a, b) = (addr(ports), addr(ports + 4), addr(ports + 8));
    let dir = DataDir::new("node-file");
    let base = |extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = ["--listen", me.as_str(), "--shards", "2"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };

    // A primary (or a promoted replica) restarted with replica flags.
    write_node_file(&dir.0, "primary");
    let stderr = refused(&dir.0, &base(&["--replica-of", &a, "--replica", &b]));
    assert!(stderr.contains("node says this node is a primary"), "{stderr}");
    assert!(stderr.contains(&format!("--replica-of {a} says replica")), "{stderr}");
    assert!(stderr.contains("--reset-role"), "names what resolves it: {stderr}");
    assert_eq!(node_file_role(&dir.0), "primary", "a refused start changes nothing");

    // A replica (or a stepped-down primary) restarted with primary flags.
    write_node_file(&dir.0, &format!("replica {a}"));
    let stderr = refused(&dir.0, &base(&["--replica", &a, "--replica", &b]));
    assert!(
        stderr.contains(&format!("node says this node is a replica of {a}")),
        "{stderr}"
    );
    assert!(stderr.contains(&format!("Start it with --replica-of {a}")), "{stderr}");
    assert!(stderr.contains("admin promote"), "{stderr}");
    assert_eq!(node_file_role(&dir.0), format!("replica {a}"));

    // --reset-role: the flags win and the file says so. (Its peers do not exist; a replica
    // serves without them.)
    write_node_file(&dir.0, "primary");
    let args = base(&["--replica-of", &a, "--replica", &b, "--reset-role"]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::launch(&Launch {
        data_dir: dir.0.clone(),
        extra: &refs,
        ..Launch::default()
    })
    .unwrap_or_else(|e| panic!("--reset-role must start: {e}"));
    assert_eq!(node_file_role(&dir.0), format!("replica {a}"));
    server.stop();

    // A replica under another primary address than its file's starts, and the file follows.
    let args = base(&["--replica-of", &b, "--replica", &a]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::launch(&Launch {
        data_dir: dir.0.clone(),
        extra: &refs,
        ..Launch::default()
    })
    .unwrap_or_else(|e| panic!("a replica of another address must start: {e}"));
    assert_eq!(node_file_role(&dir.0), format!("replica {b}"));
    server.stop();
}
