//! Helpers for the tests that drive the real `server-app` and `client-app`
//! binaries (and other programs) as child processes.
//!
//! - [`bin_dir`] / [`binary`]: the two binaries, built once per test process
//!   with the test's own profile and found in its own target folder, so
//!   `CARGO_TARGET_DIR` is respected.
//! - [`Proc`]: a child whose stdout is read line by line and whose stderr is
//!   collected, by threads; bounded waits for a line or for the exit, the
//!   port of its `Listening on` line, signals by its own PID (Unix).
//!   Dropping it kills and reaps the child.
//! - [`ChildGuard`]: the bare kill-and-reap guard, for a [`Child`] whose
//!   output a test reads itself; [`wait_exit`]: a bounded wait for an exit.
//! - [`tools_present`], [`find_program`], [`fail_if_ci`]: whether external
//!   tools are installed, failing instead of skipping when `CI` is set.
//! - `lower_nofile_in_child` (Unix): a lower fd limit for a child to be
//!   started.
//!
//! Signals (`Proc::signal`) and fd limits are Unix-only: Windows has
//! neither, its console control events go to a whole console or process
//! group, and under Wine they are hard to deliver at all. Windows tests stop
//! a server in-process through the library's `ShutdownHandle` instead.
//!
//! Where the test cannot run `cargo` itself (Windows binaries run under Wine
//! from a Linux cargo), set [`PREBUILT_APPS`] after building the two apps for
//! the same target and profile: [`bin_dir`] then only checks they are there.
//!
//! Every wait is bounded: by a [`Proc`]'s limit ([`LIMIT`] unless set with
//! [`Proc::with_limit`]) or by an explicit duration.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long a [`Proc`]'s waits may take unless it is given another limit.
pub const LIMIT: Duration = Duration::from_secs(10);

/// How often a wait for an exit looks again (a poll interval, never a
/// synchronisation: the wait ends on the exit itself).
const POLL: Duration = Duration::from_millis(10);

/// The environment variable that says `server-app` and `client-app` are
/// built already, beside this test (see [`bin_dir`]).
pub const PREBUILT_APPS: &str = "INTEGRATION_TESTS_PREBUILT_APPS";

/// Builds `server-app` and `client-app` once per test process (`cargo build
/// -p server-app -p client-app`, with the profile this test was built with)
/// and returns the folder holding them: this test's own target folder. With
/// [`PREBUILT_APPS`] set, it builds nothing and only looks for them there.
///
/// Panics when the build fails or a binary is not where it should be.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // A test runs as <target>/<profile>/deps/NAME-HASH.
        let exe = std::env::current_exe().expect("own path");
        let dir = exe
            .parent()
            .and_then(|deps| deps.parent())
            .expect("target folder")
            .to_path_buf();
        let prebuilt = std::env::var_os(PREBUILT_APPS).is_some();
        if !prebuilt {
            build_apps(&dir);
        }
        for name in ["server-app", "client-app"] {
            let path = dir.join(exe_name(name));
            assert!(
                path.exists(),
                "{} not found{}",
                path.display(),
                if prebuilt {
                    format!(" ({PREBUILT_APPS} is set: build it first)")
                } else {
                    String::new()
                }
            );
        }
        dir
    })
}

/// `name` with this platform's executable suffix (`.exe` on Windows).
fn exe_name(name: &str) -> String {
    format!("{name}{}", std::env::consts::EXE_SUFFIX)
}

/// Runs `cargo build -p server-app -p client-app` with the profile of the
/// target folder `dir`.
fn build_apps(dir: &Path) {
    let profile = dir.file_name().and_then(|n| n.to_str()).unwrap_or("debug");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace folder");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .args(["build", "-p", "server-app", "-p", "client-app"])
        .current_dir(workspace);
    match profile {
        "debug" => {}
        "release" => {
            build.arg("--release");
        }
        other => {
            build.args(["--profile", other]);
        }
    }
    let status = build.status().expect("run cargo build");
    assert!(status.success(), "cargo build failed: {status}");
}

/// The path of the built binary `name` (`server-app` or `client-app`),
/// building both first if this process has not yet.
pub fn binary(name: &str) -> PathBuf {
    bin_dir().join(exe_name(name))
}

/// A child process that is killed (by its own PID) and reaped when the
/// guard drops, whether the test passed or panicked. Harmless once the
/// child has exited. Derefs to the [`Child`].
#[derive(Debug)]
pub struct ChildGuard(Child);

impl ChildGuard {
    /// Guards `child`.
    pub fn new(child: Child) -> ChildGuard {
        ChildGuard(child)
    }
}

impl Deref for ChildGuard {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for ChildGuard {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // Kills by this child's PID only; harmless once it has exited.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `child` exits or `within` passes; returns its status, or
/// `None` if it is still running (it is left running).
pub fn wait_exit(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(POLL);
    }
}

/// A child process with its output read by threads: stdout line by line
/// into a shared buffer, stderr whole. Dropping it kills and reaps the
/// child.
///
/// The waits ([`Proc::wait_line`], [`Proc::wait_output`]) take lines in
/// order, each at most once: [`Proc::seen`] is what they have taken so far.
/// [`Proc::lines`] and [`Proc::has_line`] look at every line so far
/// without taking any.
#[derive(Debug)]
pub struct Proc {
    /// The name used in failure messages.
    name: String,
    child: ChildGuard,
    stdout: Arc<Stdout>,
    /// How many stdout lines the waits have taken.
    taken: usize,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    /// The bound on each wait.
    limit: Duration,
}

/// A child's stdout as its reader thread has read it so far.
#[derive(Debug, Default)]
struct Stdout {
    read: Mutex<Lines>,
    /// Notified on every line and at the end of the stream.
    changed: Condvar,
}

#[derive(Debug, Default)]
struct Lines {
    lines: Vec<String>,
    /// The stream has ended (the child closed it or exited).
    ended: bool,
}

impl Proc {
    /// Starts `command` with stdin from `/dev/null` and stdout and stderr
    /// piped to reader threads; `name` stands for it in failure messages.
    #[track_caller]
    pub fn spawn(name: impl Into<String>, command: &mut Command) -> Proc {
        let name = name.into();
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        let stdout_pipe = child.stdout.take().expect("stdout");
        let mut stderr_pipe = child.stderr.take().expect("stderr");
        let child = ChildGuard::new(child);
        let stdout = Arc::new(Stdout::default());
        let stderr = Arc::new(Mutex::new(String::new()));
        let (lines_sink, text_sink) = (Arc::clone(&stdout), Arc::clone(&stderr));
        let readers = vec![
            thread::spawn(move || {
                for line in BufReader::new(stdout_pipe).lines() {
                    let Ok(line) = line else { break };
                    lines_sink.read.lock().unwrap().lines.push(line);
                    lines_sink.changed.notify_all();
                }
                lines_sink.read.lock().unwrap().ended = true;
                lines_sink.changed.notify_all();
            }),
            thread::spawn(move || {
                let mut text = String::new();
                let _ = stderr_pipe.read_to_string(&mut text);
                text_sink.lock().unwrap().push_str(&text);
            }),
        ];
        Proc {
            name,
            child,
            stdout,
            taken: 0,
            stderr,
            readers,
            limit: LIMIT,
        }
    }

    /// Starts `program` with `args` (see [`Proc::spawn`]).
    #[track_caller]
    pub fn start(program: impl AsRef<Path>, args: &[&str]) -> Proc {
        let program = program.as_ref();
        Proc::spawn(
            program.display().to_string(),
            Command::new(program).args(args),
        )
    }

    /// Starts the built binary `name` (see [`binary`]) with `args`.
    #[track_caller]
    pub fn app(name: &str, args: &[&str]) -> Proc {
        Proc::spawn(name, Command::new(binary(name)).args(args))
    }

    /// Starts server-app on a free loopback port (`--host 127.0.0.1 --port
    /// 0`, then `extra`); returns it, once it has printed its `Listening on`
    /// line, and the port.
    #[track_caller]
    pub fn server(extra: &[&str]) -> (Proc, u16) {
        let mut command = server_command(extra);
        let mut server = Proc::spawn("server-app", &mut command);
        let port = server.listening_port();
        (server, port)
    }

    /// This process with `limit` as the bound on each of its waits.
    #[must_use]
    pub fn with_limit(mut self, limit: Duration) -> Proc {
        self.limit = limit;
        self
    }

    /// The child's PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every stdout line the waits have taken so far.
    pub fn seen(&self) -> Vec<String> {
        self.stdout.read.lock().unwrap().lines[..self.taken].to_vec()
    }

    /// Every stdout line read so far, taken or not.
    pub fn lines(&self) -> Vec<String> {
        self.stdout.read.lock().unwrap().lines.clone()
    }

    /// Whether some stdout line read so far satisfies `want`.
    pub fn has_line(&self, want: impl Fn(&str) -> bool) -> bool {
        self.stdout
            .read
            .lock()
            .unwrap()
            .lines
            .iter()
            .any(|l| want(l))
    }

    /// The last 40 stdout lines and all of stderr so far, for failure
    /// messages.
    pub fn describe(&self) -> String {
        let lines = self.lines();
        let tail = &lines[lines.len().saturating_sub(40)..];
        format!(
            "{}: last {} of {} stdout lines:\n{}\nstderr:\n{}",
            self.name,
            tail.len(),
            lines.len(),
            tail.join("\n"),
            self.stderr.lock().unwrap()
        )
    }

    /// Whether the child is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Waits (bounded) for the next stdout line not yet taken; `None` when
    /// the stream ended first, `Err` when the limit passed first.
    fn next_line(&mut self, deadline: Instant) -> Result<Option<String>, ()> {
        let mut read = self.stdout.read.lock().unwrap();
        loop {
            if let Some(line) = read.lines.get(self.taken) {
                self.taken += 1;
                return Ok(Some(line.clone()));
            }
            if read.ended {
                return Ok(None);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(());
            }
            read = self.stdout.changed.wait_timeout(read, left).unwrap().0;
        }
    }

    /// Waits (bounded) for a stdout line that satisfies `want`; returns it.
    /// Panics, with the output so far, when none comes in time or stdout
    /// closes first.
    #[track_caller]
    pub fn wait_line(&mut self, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + self.limit;
        loop {
            match self.next_line(deadline) {
                Ok(Some(line)) => {
                    if want(&line) {
                        return line;
                    }
                }
                Err(()) => panic!(
                    "{}: no such line within {:?}; stdout so far:\n{}\nstderr:\n{}",
                    self.name,
                    self.limit,
                    self.seen().join("\n"),
                    self.stderr.lock().unwrap()
                ),
                Ok(None) => panic!(
                    "{}: stdout closed before the line came ({:?}); stdout:\n{}\nstderr:\n{}",
                    self.name,
                    self.child.try_wait(),
                    self.seen().join("\n"),
                    self.stderr.lock().unwrap()
                ),
            }
        }
    }

    /// Waits (bounded) until everything this process printed to stdout,
    /// lines joined with `\n`, satisfies `done`; `what` names it in the
    /// failure message. For output whose pieces may share a line.
    #[track_caller]
    pub fn wait_output(&mut self, what: &str, done: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + self.limit;
        while !done(&self.seen().join("\n")) {
            let why = match self.next_line(deadline) {
                Ok(Some(_)) => continue,
                Err(()) => "not within the time limit",
                Ok(None) => "stdout closed first",
            };
            panic!(
                "{}: {what}: {why}; stdout:\n{}\nstderr:\n{}",
                self.name,
                self.seen().join("\n"),
                self.stderr.lock().unwrap()
            );
        }
    }

    /// Waits (bounded) for a `Listening on ADDR[, ADDR…]` line and returns
    /// the port of its first address, which must be a loopback one and not
    /// port 0.
    #[track_caller]
    pub fn listening_port(&mut self) -> u16 {
        let line = self.wait_line(|l| l.starts_with("Listening on "));
        let first = line["Listening on ".len()..]
            .split(", ")
            .next()
            .expect("an address");
        let addr: SocketAddr = first
            .parse()
            .unwrap_or_else(|e| panic!("bad address in {line:?}: {e}"));
        assert!(addr.ip().is_loopback(), "{line}");
        assert_ne!(addr.port(), 0, "{line}");
        addr.port()
    }

    /// Sends `signal` to this child (by its own PID, nothing else). Unix
    /// only: Windows has no signals.
    #[cfg(unix)]
    #[track_caller]
    pub fn signal(&self, signal: libc::c_int) {
        let pid = self.child.id();
        if let Err(e) = sys::kill(pid, signal) {
            panic!("kill({pid}, {signal}) failed: {e}");
        }
    }

    /// Waits (bounded by this process's limit) for the child to exit, then
    /// for its output to end; returns the status. The process stays, for
    /// [`Proc::lines`] and [`Proc::describe`]. Panics, with the output so
    /// far, if the child is still running.
    #[track_caller]
    pub fn wait_exit(&mut self) -> ExitStatus {
        let within = self.limit;
        self.wait_exit_within(within)
    }

    /// [`Proc::wait_exit`], bounded by `within`.
    #[track_caller]
    pub fn wait_exit_within(&mut self, within: Duration) -> ExitStatus {
        let Some(status) = wait_exit(&mut self.child, within) else {
            panic!(
                "{} still running after {within:?}\n{}",
                self.name,
                self.describe()
            );
        };
        // The pipes close with the process: the readers end.
        for reader in self.readers.drain(..) {
            reader.join().expect("output reader");
        }
        status
    }

    /// Waits (bounded by this process's limit) for the child to exit, then
    /// for its output to end; see [`Proc::finish_within`].
    #[track_caller]
    pub fn finish(self) -> Finished {
        let within = self.limit;
        self.finish_within(within)
    }

    /// Waits (bounded by `within`) for the child to exit, then for its
    /// output to end; returns the status, every stdout line, and stderr.
    /// Panics, with the output so far, if the child is still running.
    #[track_caller]
    pub fn finish_within(mut self, within: Duration) -> Finished {
        let status = self.wait_exit_within(within);
        Finished {
            status,
            lines: std::mem::take(&mut self.stdout.read.lock().unwrap().lines),
            stderr: std::mem::take(&mut *self.stderr.lock().unwrap()),
        }
    }
}

/// What a finished child left behind.
#[derive(Debug)]
pub struct Finished {
    /// How it exited.
    pub status: ExitStatus,
    /// Every line of its stdout, without line ends.
    pub lines: Vec<String>,
    /// All of its stderr.
    pub stderr: String,
}

impl Finished {
    /// All of stdout: the lines joined with `\n` (no trailing line end).
    pub fn stdout(&self) -> String {
        self.lines.join("\n")
    }
}

/// The command that starts server-app on a free loopback port: `--host
/// 127.0.0.1 --port 0`, then `extra`. For a start [`Proc::server`] cannot
/// express; run it with [`Proc::spawn`] and read the port with
/// [`Proc::listening_port`].
pub fn server_command(extra: &[&str]) -> Command {
    let mut command = Command::new(binary("server-app"));
    command
        .args(["--host", "127.0.0.1", "--port", "0"])
        .args(extra);
    command
}

/// Where `program` is: in the first `PATH` folder that holds it, else in
/// the first of the folders `also` (for those a non-root `PATH` may leave
/// out, such as `/usr/sbin`).
pub fn find_program(program: &str, also: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(also.iter().map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Whether `program` is a file in one of the `PATH` folders.
pub fn on_path(program: &str) -> bool {
    find_program(program, &[]).is_some()
}

/// For a test that needs `missing` (a tool, or tools) which is not
/// installed: panics when the `CI` environment variable is set (CI must
/// install `packages`); otherwise returns, and the caller skips with a note.
#[track_caller]
pub fn fail_if_ci(missing: &str, packages: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "{missing} not installed, and CI is set: CI must install {packages}"
    );
}

/// Whether every one of `tools` is on `PATH`. When one is missing, see
/// [`fail_if_ci`]: a panic under `CI`, else `false` and the caller skips.
#[track_caller]
pub fn tools_present(tools: &[&str], packages: &str) -> bool {
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !on_path(t)).collect();
    if missing.is_empty() {
        return true;
    }
    fail_if_ci(&missing.join(" and "), packages);
    false
}

/// Lowers the soft `RLIMIT_NOFILE` of `command`'s child to `soft` (the hard
/// limit stays), between fork and exec. Unix only: Windows has no such limit.
#[cfg(unix)]
pub fn lower_nofile_in_child(command: &mut Command, soft: u64) {
    sys::lower_nofile_in_child(command, soft);
}

/// The crate's only unsafe code: two libc calls on our own children.
#[cfg(unix)]
#[allow(unsafe_code)]
mod sys {
    use std::io;
    use std::process::Command;

    /// kill(2): sends `signal` to process `pid`, which must be a child of
    /// ours that has not been reaped.
    pub(super) fn kill(pid: u32, signal: libc::c_int) -> io::Result<()> {
        let pid = libc::pid_t::try_from(pid).expect("pid fits pid_t");
        // SAFETY: kill(2) takes no pointers. The PID is our own child's,
        // still owned by a `Proc` that reaps it only when it drops, so it
        // cannot have been reused for another process.
        let rc = unsafe { libc::kill(pid, signal) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// See [`super::lower_nofile_in_child`].
    pub(super) fn lower_nofile_in_child(command: &mut Command, soft: u64) {
        use std::os::unix::process::CommandExt;

        let mut current = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `current` is a live, writable `rlimit`.
        let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut current) };
        assert_eq!(rc, 0, "getrlimit: {}", io::Error::last_os_error());
        let lowered = libc::rlimit {
            rlim_cur: soft.min(current.rlim_max),
            rlim_max: current.rlim_max,
        };
        // SAFETY: the closure runs in the forked child before exec, where
        // only async-signal-safe calls are allowed: it makes one
        // setrlimit(2) call on a value copied into it, and allocates and
        // locks nothing.
        unsafe {
            command.pre_exec(move || {
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lowered) == 0 {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                }
            });
        }
    }
}

/// A number from the summary's one JSON line.
pub fn json_number(json: &str, key: &str) -> f64 {
    let needle = format!("\"{key}\":");
    let start = json
        .find(&needle)
        .unwrap_or_else(|| panic!("no {key} in {json}"))
        + needle.len();
    let rest = &json[start..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end]
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{key} is not a number in {json}"))
}

/// The one line of a load run's output that is JSON (`--json`).
pub fn json_line(out: &str) -> &str {
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with('{')).collect();
    assert_eq!(lines.len(), 1, "expected one JSON line in {out:?}");
    lines[0]
}
