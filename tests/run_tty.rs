//! Interactive sessions on a real pseudo-terminal: the y/N preflight
//! defaults to No (nothing is created); answering y starts the bottle with a
//! TTY in raw mode, the terminal's size reaches the agent and a resize is
//! forwarded, and the shell's exit code is bottle's.

mod common;
mod run_common;

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use run_common::{Cleanup, Fixture, fixture, leftovers, sidecar_image};

struct Pty {
    master: std::fs::File,
    child: std::process::Child,
    out: Arc<Mutex<String>>,
}

fn set_size(fd: i32, cols: u16, rows: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: fd is our pty master; winsize is plain data.
    unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) };
}

fn spawn_on_pty(fx: &Fixture, args: &[&str]) -> Pty {
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty fills two descriptors we then own.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty");
    set_size(master, 100, 30);
    let slave_fd = unsafe { OwnedFd::from_raw_fd(slave) };
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bottle"));
    cmd.args(args)
        .current_dir(fx.root.path())
        .stdin(Stdio::from(slave_fd.try_clone().unwrap()))
        .stdout(Stdio::from(slave_fd.try_clone().unwrap()))
        .stderr(Stdio::from(slave_fd));
    for (k, v) in fx.env() {
        cmd.env(k, v);
    }
    // A session of its own with the pty as controlling terminal, so the
    // kernel sends SIGWINCH to bottle when the size changes.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    let master = unsafe { std::fs::File::from_raw_fd(master) };
    let out = Arc::new(Mutex::new(String::new()));
    let mut reader = master.try_clone().unwrap();
    let sink = out.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    Pty { master, child, out }
}

impl Pty {
    fn wait_for(&self, what: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let o = self.out.lock().unwrap().clone();
            if o.contains(what) || Instant::now() > deadline {
                return o;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    fn send(&mut self, s: &str) {
        self.master.write_all(s.as_bytes()).unwrap();
    }
    fn exit_code(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        None
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn preflight_defaults_to_no_and_an_interactive_session_gets_a_real_tty() {
    let agent = "ttyagent";
    let Some(fx) = fixture(agent, &["upstream.bottle.test"]).await else {
        return;
    };
    let _c = Cleanup {
        agent: agent.into(),
        extra_containers: vec![],
        extra_networks: vec![],
    };
    let side = sidecar_image(&fx).await;

    // Enter alone means No: nothing starts.
    let mut p = spawn_on_pty(&fx, &["run", "--sidecar-image", &side, agent]);
    let o = p.wait_for("[y/N]", Duration::from_secs(60));
    assert!(
        o.contains("egress: 1 host allowed (upstream.bottle.test)"),
        "{o}"
    );
    p.send("\n");
    assert_eq!(
        p.exit_code(Duration::from_secs(20)),
        Some(1),
        "{}",
        p.out.lock().unwrap()
    );
    assert!(
        p.wait_for("not started", Duration::from_secs(2))
            .contains("not started")
    );
    assert_eq!(leftovers(&fx.docker, agent).await, Vec::<String>::new());

    // y: an interactive shell on a TTY of the terminal's size.
    let mut p = spawn_on_pty(&fx, &["run", "--sidecar-image", &side, agent]);
    p.wait_for("[y/N]", Duration::from_secs(60));
    p.send("y\n");
    let o = p.wait_for("$ ", Duration::from_secs(60));
    assert!(o.contains("$ "), "no shell prompt: {o}");
    p.send("stty size; echo tty=$(tty)\n");
    let o = p.wait_for("30 100", Duration::from_secs(10));
    assert!(o.contains("30 100"), "size not forwarded: {o}");
    assert!(o.contains("tty=/dev/pts/"), "{o}");
    set_size(std::os::fd::AsRawFd::as_raw_fd(&p.master), 120, 40);
    std::thread::sleep(Duration::from_millis(500));
    p.send("stty size\n");
    let o = p.wait_for("40 120", Duration::from_secs(10));
    assert!(o.contains("40 120"), "resize not forwarded: {o}");
    // Ctrl-C reaches the agent (raw mode), not bottle: the shell's sleep is
    // interrupted and the session goes on.
    p.send("sleep 30\n");
    std::thread::sleep(Duration::from_millis(700));
    p.send("\x03");
    p.send("echo after-$((40+2))\n");
    let o = p.wait_for("after-42", Duration::from_secs(10));
    assert!(
        o.contains("after-42"),
        "Ctrl-C did not reach the agent's shell: {o}"
    );
    assert!(
        p.child.try_wait().unwrap().is_none(),
        "bottle exited on Ctrl-C"
    );
    p.send("exit 3\n");
    assert_eq!(
        p.exit_code(Duration::from_secs(30)),
        Some(3),
        "{}",
        p.out.lock().unwrap()
    );
    assert_eq!(leftovers(&fx.docker, agent).await, Vec::<String>::new());
}
