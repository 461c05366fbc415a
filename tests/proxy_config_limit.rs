//! `bottle proxy --config` reads at most 1 MiB from a file, stdin or a
//! device that never ends, and refuses anything larger as bad input (exit
//! 2) with a message naming the source and the limit.

mod egress_support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Output, Stdio};

use bottle::egress::config::{EgressConfig, RunOptions};
use bottle::egress::proxy::input::MAX_CONFIG_BYTES;
use egress_support::policy;

fn proxy(config: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bottle"));
    c.args(["proxy", "--listen", "127.0.0.1:0", "--config", config]);
    c
}

/// A valid generated config padded with trailing whitespace to `len` bytes.
fn padded_config(len: usize) -> Vec<u8> {
    let text = EgressConfig::from_policy(&policy(&["a.example"], &[]), &RunOptions::default())
        .unwrap()
        .to_file_text();
    let mut bytes = text.into_bytes();
    assert!(bytes.len() < len);
    bytes.resize(len, b' ');
    bytes
}

fn assert_too_large(out: &Output, source: &str) {
    assert_eq!(out.status.code(), Some(2), "{source}: {out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(source) && err.contains("larger than 1 MiB"),
        "stderr names neither the source nor the limit: {err}"
    );
    assert!(out.stdout.is_empty(), "nothing served: {out:?}");
}

#[test]
fn config_file_over_one_mib_is_refused() {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(&padded_config(MAX_CONFIG_BYTES as usize + 1))
        .unwrap();
    let path = f.path().to_str().unwrap().to_string();
    let out = proxy(&path).stdin(Stdio::null()).output().unwrap();
    assert_too_large(&out, &path);
}

#[test]
fn config_of_exactly_one_mib_is_accepted() {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(&padded_config(MAX_CONFIG_BYTES as usize))
        .unwrap();
    let mut child = proxy(f.path().to_str().unwrap())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let ready: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(ready["event"], "ready", "{first}");
}

#[test]
fn config_from_dev_zero_is_refused() {
    let out = proxy("/dev/zero").stdin(Stdio::null()).output().unwrap();
    assert_too_large(&out, "/dev/zero");
}

#[test]
fn config_on_stdin_over_one_mib_is_refused() {
    let mut child = proxy("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // 8 MiB offered; the proxy stops reading after 1 MiB + 1 and exits, so
    // the rest of the write fails with a broken pipe, which is expected.
    let writer = std::thread::spawn(move || {
        let chunk = vec![b' '; 64 * 1024];
        for _ in 0..128 {
            if stdin.write_all(&chunk).is_err() {
                return false;
            }
        }
        true
    });
    let out = child.wait_with_output().unwrap();
    assert!(!writer.join().unwrap(), "the proxy read all 8 MiB");
    assert_too_large(&out, "<stdin>");
}
