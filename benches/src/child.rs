//! Child processes of a benchmark binary: the binary re-executed in another role
//! (a server), so that the load generator and the servers it measures are separate
//! processes, as in production. Each child prints one JSON line on stdout when it is
//! ready, logs to a file, and exits when its parent is gone.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use serde_json::Value;

use crate::Res;

/// The environment variable that names a child's role.
pub const ROLE_ENV: &str = "VAULT_BENCH_ROLE";

/// The role this process was started in, if any.
pub fn role() -> Option<String> {
    std::env::var(ROLE_ENV).ok()
}

/// A child process of this binary in another role; killed (and reaped) on drop, also
/// when the bench panics. The child also exits by itself when its stdin closes, i.e.
/// when this process is gone, however it ended.
#[derive(Debug)]
pub struct ChildGuard {
    child: Child,
    _stdin: Option<ChildStdin>,
    _stdout: BufReader<ChildStdout>,
}

impl ChildGuard {
    /// Starts `role` and reads its one JSON start line from stdout; stderr to `log`.
    pub fn spawn(role: &str, args: &[OsString], log: &Path) -> Res<(ChildGuard, Value)> {
        let exe = std::env::current_exe()?;
        let log_file = std::fs::File::create(log)?;
        let mut child = Command::new(exe)
            .env(ROLE_ENV, role)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().ok_or("the child has no stdout")?;
        let mut guard = ChildGuard {
            child,
            _stdin: stdin,
            _stdout: BufReader::new(stdout),
        };
        let mut line = String::new();
        guard._stdout.read_line(&mut line)?;
        if line.trim().is_empty() {
            return Err(format!(
                "the {role} child printed no start line; its log ({}) ends with:\n{}",
                log.display(),
                tail(log, 20)
            )
            .into());
        }
        let info: Value = serde_json::from_str(line.trim())
            .map_err(|e| format!("the {role} child's start line is not JSON ({e}): {line}"))?;
        Ok((guard, info))
    }

    /// [`spawn`](Self::spawn) for a server role (from the runtime); its URL.
    pub fn spawn_server(role: &str, args: &[OsString], log: &Path) -> Res<(ChildGuard, String)> {
        let (child, info) = tokio::task::block_in_place(|| ChildGuard::spawn(role, args, log))?;
        let url = info
            .get("url")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("the {role} server's start line has no url"))?
            .to_owned();
        Ok((child, url))
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// In a child role: exit as soon as stdin reaches its end (the parent is gone).
pub fn exit_when_parent_goes() {
    std::thread::spawn(|| {
        let mut stdin = std::io::stdin();
        let mut buf = [0u8; 64];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => std::process::exit(0),
                Ok(_) => {}
            }
        }
    });
}

/// The last `lines` lines of a file (a child's log).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
