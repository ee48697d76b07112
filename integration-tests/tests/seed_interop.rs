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
//!
//! Linux only: mono is one of the real peers CI installs on Linux (see
//! README, Platforms).
#![cfg(target_os = "linux")]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use integration_tests::process::{Proc, tools_present};

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
            if !tools_present(&["mcs", "mono"], "mono-mcs and mono-runtime") {
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

/// A C# seed program under mono, its waits bounded by [`LIMIT`].
fn mono(program: &Path, args: &[&str]) -> Proc {
    let mut full = vec![program.to_str().expect("UTF-8 path")];
    full.extend_from_slice(args);
    Proc::start("mono", &full).with_limit(LIMIT)
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
    let (server, port) = Proc::server(&[]);
    let mut server = server.with_limit(LIMIT);
    let port = port.to_string();

    // Greetings 100 ms apart instead of the seed's 1 s; still five.
    let mut client = mono(&seed.client, &["127.0.0.1", &port, "100", SEED_RUN_SECONDS]);
    // The C# client prints a send's line from its completion callback, on
    // another thread than the reply's line: wait for both kinds.
    client.wait_output("five replies and five sends", |out| {
        has_five_replies(out)
            && (0..5).all(|i| {
                out.lines()
                    .any(|l| l.ends_with(&format!("To Server : Hi {i}")))
            })
    });
    assert!(
        client
            .seen()
            .iter()
            .any(|l| l.starts_with("Conntected To 127.0.0.1:")),
        "{:#?}",
        client.seen()
    );

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
    let mut server = mono(&seed.server, &["127.0.0.1", "0", SEED_RUN_SECONDS]);
    let port = server.listening_port().to_string();

    let client = Proc::app(
        "client-app",
        &["--host", "127.0.0.1", "--port", &port, "--interval", "0.1"],
    )
    .with_limit(LIMIT)
    .finish();
    let (status, stdout, stderr) = (client.status, client.stdout(), client.stderr);
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
