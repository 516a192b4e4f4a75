//! A start that fails says what failed: the address that is taken, the data directory
//! another process holds. And what a server writes to a file or a pipe is plain text,
//! without a terminal's colour codes.

// Test code, helpers outside `#[test]` functions included: a failed setup step should stop
// the test where it happened.
#![allow(clippy::unwrap_used)]

mod common;

use common::procs::{Proc, xinge};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `xinge serve` on `data` and the given addresses, its stderr into `log`.
fn serve(cwd: &Path, data: &Path, http: &str, log: &Path) -> Command {
    let mut cmd = xinge(cwd);
    cmd.env("XINGE_LOG", "info")
        .args(["serve", "--data-dir"])
        .arg(data)
        .args(["--http-addr", http, "--tcp-addr", "127.0.0.1:0"])
        .stderr(Stdio::from(std::fs::File::create(log).unwrap()));
    cmd
}

/// Runs `cmd`, which must fail to start; returns what it wrote to `log`.
fn refused(mut cmd: Command, log: &Path) -> String {
    let mut child = cmd.spawn().unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("the second xinge started, or hangs");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success(), "the second xinge exits with an error");
    std::fs::read_to_string(log).unwrap()
}

fn assert_plain(what: &str, text: &str) {
    assert!(
        !text.contains('\x1b'),
        "{what} has terminal escape codes: {text:?}"
    );
}

#[test]
fn a_second_server_names_the_data_dir_and_the_address_it_cannot_have() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let first_log = dir.path().join("first.log");
    let first = Proc::start(&mut serve(dir.path(), &data, "127.0.0.1:0", &first_log));

    // The same data directory: the store is held by the first.
    let log = dir.path().join("same-dir.log");
    let err = refused(serve(dir.path(), &data, "127.0.0.1:0", &log), &log);
    let store = data.join("store");
    assert!(
        err.contains(&format!("cannot open the store in {}", store.display())),
        "names the store's path: {err}"
    );
    assert!(
        err.contains("another xinge process is using it"),
        "says who holds it: {err}"
    );
    assert_plain("the refusal", &err);

    // The same HTTP address, on a data directory of its own.
    let log = dir.path().join("same-port.log");
    let other = dir.path().join("other");
    let err = refused(serve(dir.path(), &other, &first.http, &log), &log);
    assert!(
        err.contains(&format!("cannot listen on {}: address in use", first.http)),
        "names the address: {err}"
    );
    assert_plain("the refusal", &err);

    drop(first);
    let logs = std::fs::read_to_string(&first_log).unwrap();
    assert!(
        logs.contains("xinge ready"),
        "the first server logged: {logs}"
    );
    assert_plain("a log written to a file", &logs);
}

#[test]
fn a_data_dir_that_cannot_be_made_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let data = file.join("data");
    let log = dir.path().join("log");
    let err = refused(serve(dir.path(), &data, "127.0.0.1:0", &log), &log);
    assert!(
        err.contains(&format!(
            "cannot create the data directory {}",
            data.display()
        )),
        "names the path: {err}"
    );
}
