//! The run summary's reading of sidecar output (`runner::sidecar::BlockedLog`,
//! the same type and method `bottle run` feeds each line to):
//! - pipelock's refusals, from a recorded audit log in pipelock's documented
//!   format (tests/data/pipelock-audit.log), are counted as the builtin's are;
//! - an agent that makes the real builtin sidecar (`bottle proxy`) refuse
//!   tens of thousands of malformed requests, each carrying kilobytes of
//!   userinfo it chose, cannot grow the state the host keeps.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bottle::egress::config::{EgressConfig, RunOptions};
use bottle::policy::{Egress, Limits, Policy, Sidecar, SidecarKind};
use bottle::runner::sidecar::{BlockedLog, MAX_HOSTS};

#[test]
fn pipelock_refusals_from_a_recorded_log_reach_the_summary() {
    let f = std::fs::File::open(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/pipelock-audit.log"
    ))
    .unwrap();
    let mut log = BlockedLog::default();
    let mut refusals = 0;
    for line in BufReader::new(f).lines() {
        if log.observe(&line.unwrap()) {
            refusals += 1;
        }
    }
    // Four `blocked` (CONNECT, plain HTTP, blocklist, rate limit) plus one
    // more to the same host, and one `sni_mismatch`; tunnel, forward and
    // lifecycle events are not refusals.
    assert_eq!(refusals, 6);
    assert_eq!(
        log.summary().as_deref(),
        Some(
            "sidecar blocked 6 requests to 5 hosts: api.anthropic.com, evil.example, \
example.com, plain.example, www.example.com"
        )
    );
}

fn policy() -> Policy {
    Policy {
        schema: 1,
        agent: "test".into(),
        egress: Egress {
            allow: vec!["allowed.test".into()],
            ssh: vec![],
        },
        env: vec![],
        sidecar: Sidecar {
            kind: SidecarKind::Builtin,
            image: None,
        },
        limits: Limits::default(),
    }
}

struct Kill(u32);
impl Drop for Kill {
    fn drop(&mut self) {
        unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
    }
}

/// Malformed requests sent; each authority carries this much userinfo.
const REQUESTS: usize = 20_000;
const USERINFO: usize = 7_000;

#[test]
fn malformed_requests_with_huge_userinfo_keep_the_hosts_state_bounded() {
    let mut cfg = tempfile::NamedTempFile::new().unwrap();
    let text = EgressConfig::from_policy(&policy(), &RunOptions::default())
        .unwrap()
        .to_file_text();
    cfg.write_all(text.as_bytes()).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_bottle"))
        .args(["proxy", "--listen", "127.0.0.1:0", "--config"])
        .arg(cfg.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let guard = Kill(child.id());
    let mut lines = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    lines.read_line(&mut first).unwrap();
    let ready: serde_json::Value = serde_json::from_str(&first).unwrap();
    let addr: std::net::SocketAddr = ready["listen"].as_str().unwrap().parse().unwrap();

    // The host side: every line the sidecar writes goes through the same
    // accounting `bottle run` uses. `raw` is what keeping each refused host
    // string (the old Vec<String>) would hold: at least a String header and
    // the string's bytes per refusal.
    let log = Arc::new(Mutex::new(BlockedLog::default()));
    let raw = Arc::new(Mutex::new(0usize));
    let (log_r, raw_r) = (log.clone(), raw.clone());
    std::thread::spawn(move || {
        for line in lines.lines() {
            let Ok(line) = line else { break };
            if let Some(h) = bottle::runner::sidecar::blocked_host(&line) {
                // What the old accounting kept: the whole host field.
                let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                let full = v["host"].as_str().map_or(h.len(), str::len);
                *raw_r.lock().unwrap() += std::mem::size_of::<String>() + full;
            }
            log_r.lock().unwrap().observe(&line);
        }
    });

    // The agent side: distinct userinfo each time, so neither prefixes nor
    // hosts repeat.
    let started = Instant::now();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                let pad = "x".repeat(USERINFO);
                for i in (t..REQUESTS).step_by(4) {
                    let mut s = TcpStream::connect(addr).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    let req =
                        format!("CONNECT u{i:05}{pad}@h{i}.allowed.test:443 HTTP/1.1\r\n\r\n");
                    s.write_all(req.as_bytes()).unwrap();
                    let mut status = [0u8; 12];
                    s.read_exact(&mut status).unwrap();
                    assert_eq!(&status[9..12], b"403", "request {i}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while log.lock().unwrap().requests() < REQUESTS as u64 {
        assert!(
            Instant::now() < deadline,
            "decision lines did not all arrive"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let sent = started.elapsed();

    let log = log.lock().unwrap();
    let held = log.heap_bytes();
    let raw = *raw.lock().unwrap();
    eprintln!(
        "{REQUESTS} refusals in {sent:?}: accounting holds {held} bytes; keeping every host would hold {raw} bytes"
    );
    // Exact counts, capped hosts, bounded bytes.
    assert_eq!(log.requests(), REQUESTS as u64);
    let bound = MAX_HOSTS * (256 + 96);
    assert!(
        held <= bound,
        "accounting holds {held} bytes, bound {bound}"
    );
    // The old approach (every refused host string kept) is far past it.
    assert!(raw > 100 * bound, "{raw}");
    let summary = log.summary().unwrap();
    assert!(
        summary.starts_with(&format!(
            "sidecar blocked {REQUESTS} requests to more than {MAX_HOSTS} hosts: "
        )),
        "{summary}"
    );
    assert!(summary.len() < 2_000, "{}", summary.len());
    drop(guard);
    let _ = child.wait();
}
