//! The shared integration-test harness: a real Debian `docker-registry` on a
//! free loopback port, the Docker engine (API version negotiated, because the
//! machines run Engine 20.10 / API 1.41), a runner for the built `bottle`
//! binary, and a tiny busybox base image spec.
//!
//! Policy for missing tools: a missing engine, registry binary or busybox is
//! a test FAILURE (panic naming what to install), on every machine. Only an
//! explicit opt-out, `BOTTLE_TEST_SKIP_MISSING=1` (ignored under `CI=true`),
//! turns it into a skip: the test returns early, says so on stderr, and adds
//! a line to the skip log (`$BOTTLE_TEST_SKIP_LOG`, which `scripts/test`
//! counts and prints at the end), so a run that tested nothing never looks
//! like a pass.
//!
//! Everything a test starts is torn down by a guard's `Drop`, so a failing
//! assertion does not leave a registry process or a temp dir behind.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bottle::oci::spec::{Base, ConfigSpec, Entry, EntryKind, FileSource, ImageSpec, LayerSpec};

/// Label every test container/network/image carries, so `gc` and humans can
/// find leftovers.
pub(crate) const TEST_LABEL: &str = "dev.bottle.test";

pub(crate) const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
pub(crate) const BUSYBOX: &str = "/bin/busybox";

pub(crate) fn in_ci() -> bool {
    std::env::var("CI")
        .map(|v| v == "true" || v == "1")
        .unwrap_or(false)
}

/// The opt-out variable that turns a missing tool into a counted skip.
pub(crate) const SKIP_VAR: &str = "BOTTLE_TEST_SKIP_MISSING";

fn skip_allowed() -> bool {
    !in_ci() && std::env::var(SKIP_VAR).is_ok_and(|v| v == "1")
}

/// Fail, unless the opt-out is set outside CI: then record the skip and
/// return `false`.
fn missing(what: &str, how: &str) -> bool {
    if !skip_allowed() {
        panic!(
            "{what} is missing: {how}\n(to skip the tests that need it, set {SKIP_VAR}=1; never under CI)"
        );
    }
    let test = std::thread::current()
        .name()
        .unwrap_or("unnamed test")
        .to_string();
    eprintln!("SKIPPED {test}: {what} is missing ({how}); {SKIP_VAR}=1 is set");
    if let Some(log) = std::env::var_os("BOTTLE_TEST_SKIP_LOG") {
        // One short line per skip; appends of this size are atomic.
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
        {
            let _ = writeln!(f, "{test}: {what} is missing ({how})");
        }
    }
    false
}

/// True when `/usr/bin/docker-registry` exists (else fail, or a counted skip).
pub(crate) fn require_registry_binary() -> bool {
    Path::new(REGISTRY_BIN).is_file()
        || missing(
            REGISTRY_BIN,
            "install it with `apt-get install docker-registry`",
        )
}

/// True when `/bin/busybox` exists (else fail, or a counted skip).
pub(crate) fn require_busybox() -> bool {
    Path::new(BUSYBOX).is_file()
        || missing(BUSYBOX, "install it with `apt-get install busybox-static`")
}

/// The Docker engine with a negotiated API version, if one answers.
pub(crate) async fn docker() -> Option<bollard::Docker> {
    let d = bollard::Docker::connect_with_local_defaults().ok()?;
    let d = d.negotiate_version().await.ok()?;
    d.ping().await.ok()?;
    Some(d)
}

/// The engine, or `None` after a counted skip (else panics: see [`missing`]).
pub(crate) async fn require_docker() -> Option<bollard::Docker> {
    match docker().await {
        Some(d) => Some(d),
        None => {
            missing(
                "a Docker engine",
                "start dockerd or set DOCKER_HOST to an engine that answers",
            );
            None
        }
    }
}

/// A free TCP port on 127.0.0.1 (bound then released; the tiny race with
/// another process is acceptable for tests).
pub(crate) fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// A running `docker-registry serve` on 127.0.0.1:<port> with its storage in
/// a temp dir. Killed and cleaned up on drop.
pub(crate) struct Registry {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Registry {
    /// Start a registry, or `None` (after a counted skip; else a panic) when
    /// the binary is missing. Panics if the binary exists but does not come up.
    pub(crate) fn start() -> Option<Registry> {
        if !require_registry_binary() {
            return None;
        }
        let mut last = String::new();
        for _ in 0..3 {
            match Self::try_start() {
                Ok(r) => return Some(r),
                Err(e) => last = e,
            }
        }
        panic!("docker-registry did not start: {last}");
    }

    fn try_start() -> Result<Registry, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let port = free_port();
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage).map_err(|e| e.to_string())?;
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  \
                 filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  \
                 addr: 127.0.0.1:{port}\n",
                storage.display()
            ),
        )
        .map_err(|e| e.to_string())?;
        let log =
            std::fs::File::create(dir.path().join("registry.log")).map_err(|e| e.to_string())?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("cannot run {REGISTRY_BIN}: {e}"))?;
        let mut reg = Registry { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = reg.child.try_wait() {
                return Err(format!("exited with {status}: {}", reg.log()));
            }
            if http_status(port, "/v2/") == Some(200) {
                return Ok(reg);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("/v2/ did not answer within 15s: {}", reg.log()))
    }

    /// `127.0.0.1:<port>`
    pub(crate) fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `localhost:<port>`
    pub(crate) fn localhost(&self) -> String {
        format!("localhost:{}", self.port)
    }

    /// Where the registry keeps its blobs (to delete them in tests).
    pub(crate) fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// HTTP status of a GET on the registry (plain HTTP).
    pub(crate) fn get_status(&self, path: &str) -> Option<u16> {
        http_status(self.port, path)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Minimal HTTP/1.0 GET, enough to probe a loopback registry.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    let line = std::str::from_utf8(&buf[..n]).ok()?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// What a run of the `bottle` binary produced.
#[derive(Debug)]
pub(crate) struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Run the built `bottle` binary in `cwd` with extra `env` (added to the
/// inherited environment) and capture everything.
pub(crate) fn run_bottle(args: &[&str], cwd: &Path, env: &[(&str, &str)]) -> Output {
    run_bottle_stdin(args, cwd, env, None)
}

/// Like [`run_bottle`], feeding `stdin` (e.g. secrets, which never go on
/// argv or in env) to the process; `None` gives it /dev/null.
pub(crate) fn run_bottle_stdin(
    args: &[&str],
    cwd: &Path,
    env: &[(&str, &str)],
    stdin: Option<&[u8]>,
) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bottle"));
    cmd.args(args)
        .current_dir(cwd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("run the bottle binary");
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A child that exits early closes the pipe; that is its answer, not ours.
        let _ = pipe.write_all(input);
    }
    let out = child
        .wait_with_output()
        .expect("wait for the bottle binary");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A tiny base image: static busybox at `bin/busybox` with `sh`, `echo`,
/// `cat`, `ls`, `id` symlinks, plus `tmp`. Reads `/bin/busybox` at build time.
pub(crate) fn busybox_spec() -> ImageSpec {
    let root = |path: &str, mode, kind| Entry {
        path: path.into(),
        mode,
        uid: 0,
        gid: 0,
        kind,
    };
    let mut entries = vec![
        root(
            "bin/busybox",
            0o755,
            EntryKind::File(FileSource::Path(PathBuf::from(BUSYBOX))),
        ),
        root("tmp", 0o1777, EntryKind::Dir),
    ];
    for applet in [
        "sh", "echo", "cat", "ls", "id", "env", "wget", "nc", "sleep",
    ] {
        entries.push(root(
            &format!("bin/{applet}"),
            0o777,
            EntryKind::Symlink("busybox".into()),
        ));
    }
    ImageSpec {
        base: Base::Scratch,
        layers: vec![LayerSpec {
            name: "busybox".into(),
            entries,
        }],
        config: ConfigSpec {
            env: vec!["PATH=/bin".into()],
            cmd: vec!["sh".into()],
            ..ConfigSpec::default()
        },
        mtime: 0,
    }
}
