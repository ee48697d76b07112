//! Our apps against the original C# programs of the seed blog post.
//!
//! `integration-tests/seed/` holds the seed's eight C# classes as they were
//! published, changed only where a test needs it (each change is marked
//! `[test change]`): the programs take host, port, greeting interval and run
//! time from their arguments, the server prints the address it bound, and
//! `while (true) ;` became a bounded wait. The `Session`, `Listener` and
//! `Connector` logic is the seed's.
//!
//! They are compiled with `mcs` and run with `mono`. Without those tools
//! each test fails when the `CI` environment variable is set (CI installs
//! them), and otherwise prints a skip note and passes.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The longest any one wait in these tests may take (mono starts slowly).
const LIMIT: Duration = Duration::from_secs(20);

/// How long the C# programs run before they exit by themselves; the tests
/// end them sooner, once they have seen what they wait for.
const SEED_RUN_SECONDS: &str = "30";

/// The seed's reply suffix, which server-app also appends by default.
const SUFFIX: &str = " - Receive Completed";

/// The seed's two programs, compiled.
struct SeedPrograms {
    server: PathBuf,
    client: PathBuf,
}

/// Compiles the C# seed once per test process; `None` (after a skip note)
/// when `mcs` or `mono` is missing and `CI` is not set.
fn seed_programs() -> Option<&'static SeedPrograms> {
    static PROGRAMS: OnceLock<Option<SeedPrograms>> = OnceLock::new();
    PROGRAMS
        .get_or_init(|| {
            let missing: Vec<&str> = ["mcs", "mono"]
                .into_iter()
                .filter(|tool| !on_path(tool))
                .collect();
            if !missing.is_empty() {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "{} not on PATH, and CI is set: CI must install mono-mcs and mono-runtime",
                    missing.join(" and ")
                );
                return None;
            }
            let sources = Path::new(env!("CARGO_MANIFEST_DIR")).join("seed");
            let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("seed-interop");
            std::fs::create_dir_all(&out).expect("create the build folder");
            let common = ["IPInformation.cs", "Session.cs"];
            let server = compile(
                &sources,
                &out,
                "server.exe",
                &[
                    &common[..],
                    &["Listener.cs", "ClientSession.cs", "ServerProgram.cs"],
                ]
                .concat(),
            );
            let client = compile(
                &sources,
                &out,
                "client.exe",
                &[
                    &common[..],
                    &["Connector.cs", "ServerSession.cs", "ClientProgram.cs"],
                ]
                .concat(),
            );
            Some(SeedPrograms { server, client })
        })
        .as_ref()
        .or_else(|| {
            eprintln!("SKIPPED: mcs or mono not on PATH (apt-get install mono-mcs mono-runtime)");
            None
        })
}

/// Compiles `files` into `out/name`, through a name of this process's own
/// so that two test runs at once never see a half-written program.
fn compile(sources: &Path, out: &Path, name: &str, files: &[&str]) -> PathBuf {
    let target = out.join(name);
    let partial = out.join(format!("{name}.{}", std::process::id()));
    let output = Command::new("mcs")
        .arg(format!("-out:{}", partial.display()))
        .args(files)
        .current_dir(sources)
        .stdin(Stdio::null())
        .output()
        .expect("run mcs");
    assert!(
        output.status.success(),
        "mcs {name} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::rename(&partial, &target).expect("move the compiled program");
    target
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}

/// Builds server-app and client-app once (same profile as this test);
/// returns the folder holding them.
fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // This test runs as <target>/<profile>/deps/seed_interop-HASH.
        let exe = std::env::current_exe().expect("own path");
        let dir = exe
            .parent()
            .and_then(|deps| deps.parent())
            .expect("target folder")
            .to_path_buf();
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
        dir
    })
}

/// A child process whose stdout is read line by line into a channel and
/// whose stderr is collected; dropping it kills and reaps the child.
struct Proc {
    name: String,
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

impl Proc {
    fn start(program: &Path, args: &[&str]) -> Proc {
        let name = program.display().to_string();
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        let stdout = child.stdout.take().expect("stdout");
        let mut stderr_pipe = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stderr);
        let readers = vec![
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            }),
            std::thread::spawn(move || {
                let mut text = String::new();
                let _ = stderr_pipe.read_to_string(&mut text);
                sink.lock().unwrap().push_str(&text);
            }),
        ];
        Proc {
            name,
            child,
            lines,
            seen: Vec::new(),
            stderr,
            readers,
        }
    }

    /// A C# seed program under mono.
    fn mono(program: &Path, args: &[&str]) -> Proc {
        let mut full = vec![program.to_str().expect("UTF-8 path")];
        full.extend_from_slice(args);
        Proc::start(Path::new("mono"), &full)
    }

    /// Waits (bounded) until everything this process printed satisfies
    /// `done`.
    fn wait_output(&mut self, what: &str, done: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + LIMIT;
        while !done(&self.seen.join("\n")) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(e) => panic!(
                    "{}: {what}: {}; stdout:\n{}\nstderr:\n{}",
                    self.name,
                    match e {
                        RecvTimeoutError::Timeout => "not within the time limit",
                        RecvTimeoutError::Disconnected => "stdout closed first",
                    },
                    self.seen.join("\n"),
                    self.stderr.lock().unwrap()
                ),
            }
        }
    }

    /// The port from the first `Listening on 127.0.0.1:PORT` line.
    fn listening_port(&mut self) -> u16 {
        self.wait_output("a 'Listening on' line", |out| out.contains("Listening on "));
        let line = self
            .seen
            .iter()
            .find_map(|l| l.strip_prefix("Listening on "))
            .expect("the line");
        let addr: std::net::SocketAddr = line
            .split(", ")
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("bad address in {line:?}"));
        assert!(addr.ip().is_loopback(), "{line}");
        addr.port()
    }

    /// Waits (bounded) for the exit and the end of the output.
    fn finish(mut self) -> (ExitStatus, String, String) {
        let deadline = Instant::now() + LIMIT;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "{} still running; stdout:\n{}",
                self.name,
                self.seen.join("\n")
            );
            // A poll interval; the loop ends on the exit itself.
            std::thread::sleep(Duration::from_millis(10));
        };
        for reader in self.readers.drain(..) {
            reader.join().expect("output reader");
        }
        self.seen.extend(self.lines.try_iter());
        let stderr = self.stderr.lock().unwrap().clone();
        (status, self.seen.join("\n"), stderr)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Kills by this child's PID only; harmless once it has exited.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `output` holds the five echoed greetings, in order (raw framing
/// may put two replies in one read, so this looks at the text as a whole).
fn has_five_replies(output: &str) -> bool {
    let mut rest = output;
    for i in 0..5 {
        match rest.find(&format!("Hi {i}{SUFFIX}")) {
            Some(at) => rest = &rest[at..],
            None => return false,
        }
    }
    true
}

#[test]
fn seed_csharp_client_gets_five_replies_from_server_app() {
    let Some(seed) = seed_programs() else { return };
    let mut server = Proc::start(
        &bin_dir().join("server-app"),
        &["--host", "127.0.0.1", "--port", "0"],
    );
    let port = server.listening_port().to_string();

    // Greetings 100 ms apart instead of the seed's 1 s; still five.
    let mut client = Proc::mono(&seed.client, &["127.0.0.1", &port, "100", SEED_RUN_SECONDS]);
    client.wait_output("five replies", has_five_replies);
    assert!(
        client
            .seen
            .iter()
            .any(|l| l.starts_with("Conntected To 127.0.0.1:")),
        "{:#?}",
        client.seen
    );
    for i in 0..5 {
        assert!(
            client
                .seen
                .iter()
                .any(|l| l.ends_with(&format!("To Server : Hi {i}"))),
            "{:#?}",
            client.seen
        );
    }

    server.wait_output("five messages from the C# client", |out| {
        (0..5).all(|i| out.contains(&format!("From client - Len : 4, String : Hi {i}")))
    });
    drop(client);
    server.wait_output("the C# client's disconnect", |out| {
        out.contains("Disconnected from 127.0.0.1:")
    });
}

#[test]
fn client_app_gets_five_replies_from_the_seed_csharp_server() {
    let Some(seed) = seed_programs() else { return };
    let mut server = Proc::mono(&seed.server, &["127.0.0.1", "0", SEED_RUN_SECONDS]);
    let port = server.listening_port().to_string();

    let client = Proc::start(
        &bin_dir().join("client-app"),
        &["--host", "127.0.0.1", "--port", &port, "--interval", "0.1"],
    );
    let (status, stdout, stderr) = client.finish();
    assert!(status.success(), "{status}\n{stdout}\n{stderr}");
    assert!(has_five_replies(&stdout), "{stdout}");
    for i in 0..5 {
        assert!(
            stdout
                .lines()
                .any(|l| l.ends_with(&format!("] To server : Hi {i}"))),
            "{stdout}"
        );
    }
    assert!(stderr.is_empty(), "{stderr}");

    server.wait_output("five greetings and the disconnect", |out| {
        (0..5).all(|i| out.contains(&format!("String : Hi {i}")))
            && out.contains("Disconntected From 127.0.0.1:")
    });
}
