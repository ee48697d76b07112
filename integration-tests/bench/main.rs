//! The benchmark: server-app against a hand-written async-std echo server.
//!
//! `cargo run --release -p integration-tests --bin bench [-- --quick] [-- --only SCENARIO]`
//!
//! It builds `server-app` and `client-app` in release mode (`--no-build`
//! skips that), then for each scenario starts a fresh server per run
//! (`server-app --quiet --suffix '' --port 0 --host 127.0.0.1`, and as the
//! reference `reference-echo --port 0`, both on 127.0.0.1 only), drives it
//! with `client-app`'s load mode, and prints a table with the median of 3 runs
//! per server, the ratio, and issue 4's targets. With two or more CPUs the
//! server is pinned to CPU 0 and the load to CPU 1 (`taskset`). Every process
//! it starts is killed by its PID when its run ends, also on a panic.
//!
//! Targets are printed as pass/fail, never asserted: speed belongs here, not
//! in a timed test.
//!
//! The `workers-*` scenarios (issue 6) hold `server-app --workers 2` (the
//! "server-app" column) against `server-app --workers 1` (the "reference"
//! column) on the pipelined and fixed-rate loads, and `reuseport-*` hold
//! `--workers 2 --reuse-port` (a listening socket per worker) against
//! `--workers 2` (one accept loop), the server unpinned so that a second
//! worker has a second CPU to run on (`-- --only workers`, `-- --only reuseport`).
//!
//! The `tls-*` scenarios (issue 13, `-- --only tls`) run `server-app
//! --tls-cert --tls-key` against `reference-echo-tls` (the same echo on
//! async-std with futures-rustls), with certificates made once per run
//! (`integration_tests::pki`, ECDSA P-256) and the load with `--tls`: server
//! CPU at a fixed rate, new sessions per second (`--handshakes`: a full
//! handshake, one echo and a close per connection) and RSS per idle TLS
//! connection (2,000 of them).
//!
//! The `ws-*` scenarios (issue 14, `-- --only ws`) run `server-app
//! --websocket` against `reference-echo-ws` (an async-tungstenite echo on
//! async-std, a task per connection), the load with `--websocket` (one
//! masked binary frame per message): messages per second, pipelined, and
//! server CPU at a fixed rate. A `server-app` without `--websocket` fails
//! these rows with a message that says so; `BENCH_WS_APP=reference` puts
//! the reference in both columns, to try the rows themselves.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use integration_tests::pki::Pki;

/// Options from the command line.
#[derive(Debug, Clone)]
struct Options {
    runs: usize,
    seconds: f64,
    only: Option<String>,
    build: bool,
}

fn parse_options() -> Result<Options, String> {
    let mut opts = Options {
        runs: 3,
        seconds: 5.0,
        only: None,
        build: true,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => {
                opts.runs = 1;
                opts.seconds = 2.0;
            }
            "--only" => opts.only = Some(args.next().ok_or("--only needs a scenario name")?),
            "--no-build" => opts.build = false,
            "--help" | "-h" => {
                return Err(format!(
                    "usage: bench [--quick] [--only SCENARIO] [--no-build]\nscenarios: {}",
                    SCENARIOS.map(|s| s.name).join(", ")
                ));
            }
            other => return Err(format!("unexpected argument {other:?} (try --help)")),
        }
    }
    if let Some(only) = &opts.only
        && !SCENARIOS.iter().any(|s| s.name.starts_with(only.as_str()))
    {
        return Err(format!("no scenario named {only:?}"));
    }
    Ok(opts)
}

/// What a scenario reports.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Figure {
    /// Round-trip p50 and p99 in microseconds (lower is better).
    Latency,
    /// Correct replies per second.
    MsgsPerSec,
    /// Payload megabytes per second.
    MbPerSec,
    /// Server CPU percent over the measuring window, at a fixed rate.
    ServerCpu,
    /// Server RSS bytes per idle connection.
    IdleRss,
    /// New TLS sessions per second: full handshake, one echo, close.
    Handshakes,
}

/// One row group of the table.
#[derive(Debug, Clone, Copy)]
struct Scenario {
    name: &'static str,
    /// Framing of server-app and the load; the reference always echoes raw
    /// bytes and is driven with raw framing (its number is the baseline the
    /// framed rows are held against).
    framing: &'static str,
    clients: usize,
    size: usize,
    window: usize,
    rate: f64,
    figure: Figure,
    /// Target on the ratio server-app / reference (`Some(limit)`), with
    /// whether the ratio must be at most (`true`) or at least the limit.
    target: Option<(f64, bool)>,
    /// Measure two settings of `server-app` against each other (unpinned)
    /// instead of server-app against the reference.
    compare: Option<[Server; 2]>,
    /// Over TLS (issue 13): `server-app --tls-cert --tls-key` against
    /// `reference-echo-tls`, the load with `--tls`.
    tls: bool,
    /// Over WebSocket (issue 14): `server-app --websocket` against
    /// `reference-echo-ws`, the load with `--websocket`.
    ws: bool,
}

const IDLE_CONNECTIONS: usize = 5000;
const FIXED_RATE: f64 = 1_000_000.0;
/// Issue 11: at most 1,024 bytes of RSS per idle connection.
const IDLE_TARGET_BYTES: f64 = 1024.0;
/// Issue 13: idle TLS connections held for the memory row.
const IDLE_TLS_CONNECTIONS: usize = 2000;
/// Issue 14: the fixed rate of the WebSocket CPU row, far below
/// [`FIXED_RATE`]: the async-tungstenite reference writes and flushes a
/// frame per message and peaks at 55-135 k msgs/s pipelined here, and at
/// 100 k it used 65-98 % of its core, so both columns could read a full
/// core and compare nothing. At 50 k (one message per connection per
/// millisecond) it uses about half of it.
const WS_FIXED_RATE: f64 = 50_000.0;
/// Set to `reference` to run `reference-echo-ws` in the server-app column
/// of the `ws-*` rows as well (the rows' own check while server-app has no
/// `--websocket`).
const WS_APP_OVERRIDE: &str = "BENCH_WS_APP";

const SCENARIOS: [Scenario; 16] = [
    Scenario {
        name: "ping-pong",
        framing: "raw",
        clients: 1,
        size: 64,
        window: 1,
        rate: 0.0,
        figure: Figure::Latency,
        target: Some((1.05, true)),
        compare: None,
        tls: false,
        ws: false,
    },
    Scenario {
        name: "pipelined",
        framing: "raw",
        clients: 50,
        size: 64,
        window: 16,
        rate: 0.0,
        figure: Figure::MsgsPerSec,
        target: Some((1.25, false)),
        compare: None,
        tls: false,
        ws: false,
    },
    Scenario {
        name: "bulk",
        framing: "raw",
        clients: 10,
        size: 16 * 1024,
        window: 4,
        rate: 0.0,
        figure: Figure::MbPerSec,
        target: Some((1.0, false)),
        compare: None,
        tls: false,
        ws: false,
    },
    Scenario {
        name: "framed",
        framing: "length-prefixed",
        clients: 50,
        size: 64,
        window: 16,
        rate: 0.0,
        figure: Figure::MsgsPerSec,
        target: Some((1.0, false)),
        compare: None,
        tls: false,
        ws: false,
    },
    Scenario {
        name: "fixed-rate-raw",
        framing: "raw",
        clients: 50,
        size: 64,
        window: 1,
        rate: FIXED_RATE,
        figure: Figure::ServerCpu,
        target: Some((0.80, true)),
        compare: None,
        tls: false,
        ws: false,
    },
    Scenario {
        name: "fixed-rate-framed",
        framing: "length-prefixed",
        clients: 50,
        size: 64,
        window: 1,
        rate: FIXED_RATE,
        figure: Figure::ServerCpu,
        target: Some((0.90, true)),
        compare: None,
        tls: false,
        ws: false,
    },
    Scenario {
        name: "idle",
        framing: "raw",
        clients: IDLE_CONNECTIONS,
        size: 64,
        window: 1,
        rate: 0.0,
        figure: Figure::IdleRss,
        target: None,
        compare: None,
        tls: false,
        ws: false,
    },
    Scenario {
        name: "workers-pipelined",
        framing: "raw",
        clients: 50,
        size: 64,
        window: 16,
        rate: 0.0,
        figure: Figure::MsgsPerSec,
        target: None,
        compare: Some([Server::Workers(2, false), Server::Workers(1, false)]),
        tls: false,
        ws: false,
    },
    Scenario {
        name: "workers-fixed-rate",
        framing: "raw",
        clients: 50,
        size: 64,
        window: 1,
        rate: FIXED_RATE,
        figure: Figure::ServerCpu,
        target: None,
        compare: Some([Server::Workers(2, false), Server::Workers(1, false)]),
        tls: false,
        ws: false,
    },
    Scenario {
        name: "reuseport-pipelined",
        framing: "raw",
        clients: 50,
        size: 64,
        window: 16,
        rate: 0.0,
        figure: Figure::MsgsPerSec,
        target: None,
        compare: Some([Server::Workers(2, true), Server::Workers(2, false)]),
        tls: false,
        ws: false,
    },
    Scenario {
        name: "reuseport-fixed-rate",
        framing: "raw",
        clients: 50,
        size: 64,
        window: 1,
        rate: FIXED_RATE,
        figure: Figure::ServerCpu,
        target: None,
        compare: Some([Server::Workers(2, true), Server::Workers(2, false)]),
        tls: false,
        ws: false,
    },
    // Issue 13: TLS 1.3 (both sides prefer it), ECDSA P-256 certificates
    // made for the run.
    Scenario {
        name: "tls-fixed-rate",
        framing: "raw",
        clients: 50,
        size: 64,
        window: 1,
        rate: FIXED_RATE,
        figure: Figure::ServerCpu,
        target: Some((0.80, true)),
        compare: None,
        tls: true,
        ws: false,
    },
    Scenario {
        name: "tls-handshakes",
        framing: "raw",
        clients: 50,
        size: 64,
        window: 1,
        rate: 0.0,
        figure: Figure::Handshakes,
        target: Some((1.0, false)),
        compare: None,
        tls: true,
        ws: false,
    },
    Scenario {
        name: "tls-idle",
        framing: "raw",
        clients: IDLE_TLS_CONNECTIONS,
        size: 64,
        window: 1,
        rate: 0.0,
        figure: Figure::IdleRss,
        target: Some((0.5, true)),
        compare: None,
        tls: true,
        ws: false,
    },
    // Issue 14: WebSocket, one masked binary frame per message.
    Scenario {
        name: "ws-pipelined",
        framing: "raw",
        clients: 50,
        size: 64,
        window: 16,
        rate: 0.0,
        figure: Figure::MsgsPerSec,
        target: Some((1.5, false)),
        compare: None,
        tls: false,
        ws: true,
    },
    Scenario {
        name: "ws-fixed-rate",
        framing: "raw",
        clients: 50,
        size: 64,
        window: 1,
        rate: WS_FIXED_RATE,
        figure: Figure::ServerCpu,
        target: Some((0.70, true)),
        compare: None,
        tls: false,
        ws: true,
    },
];

/// Which server a run measures.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Server {
    App,
    Reference,
    /// `server-app --workers N`, unpinned; with `--reuse-port` if true.
    Workers(usize, bool),
}

impl Server {
    /// The `server-app` flags that set this server apart.
    fn flags(self) -> String {
        match self {
            Server::Workers(n, true) => format!("--workers {n} --reuse-port"),
            Server::Workers(n, false) => format!("--workers {n}"),
            Server::App => "server-app".into(),
            Server::Reference => "reference".into(),
        }
    }
}

/// Where the binaries are and how processes are pinned.
#[derive(Debug)]
struct Env {
    bin_dir: PathBuf,
    pin: bool,
    clk_tck: f64,
    /// The run's certificates, made once when a TLS scenario runs; the
    /// folder goes when the run ends.
    pki: Option<Pki>,
}

/// What one run measured (the figures its scenario needs).
#[derive(Debug, Clone, Default)]
struct Sample {
    values: Vec<f64>,
    /// Achieved load rate (fixed-rate rows), msgs/s.
    achieved: f64,
    errors: u64,
}

fn main() -> ExitCode {
    let opts = match parse_options() {
        Ok(opts) => opts,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    match run(&opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(opts: &Options) -> Result<(), String> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("no workspace folder")?
        .to_path_buf();
    if opts.build {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        eprintln!("building server-app, client-app and the benchmark (release)..");
        let status = Command::new(cargo)
            .args([
                "build",
                "--release",
                "-p",
                "server-app",
                "-p",
                "client-app",
                "-p",
                "integration-tests",
            ])
            .current_dir(&workspace)
            .status()
            .map_err(|e| format!("run cargo build: {e}"))?;
        if !status.success() {
            return Err(format!("cargo build failed: {status}"));
        }
    }
    let exe = std::env::current_exe().map_err(|e| format!("find own path: {e}"))?;
    let bin_dir = exe
        .parent()
        .ok_or("no folder for own binary")?
        .to_path_buf();
    for name in [
        "server-app",
        "client-app",
        "reference-echo",
        "reference-echo-tls",
        "reference-echo-ws",
    ] {
        if !bin_dir.join(name).exists() {
            return Err(format!(
                "{} not found; build with cargo build --release -p server-app -p client-app -p integration-tests",
                bin_dir.join(name).display()
            ));
        }
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let taskset = Command::new("taskset")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let pin = cpus >= 2 && taskset;
    let clk_tck = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0);
    let selected = |s: &Scenario| {
        opts.only
            .as_ref()
            .is_none_or(|only| s.name.starts_with(only.as_str()))
    };
    let pki = SCENARIOS
        .iter()
        .any(|s| s.tls && selected(s))
        .then(Pki::new);
    let env = Env {
        bin_dir,
        pin,
        clk_tck,
        pki,
    };
    eprintln!(
        "{} CPUs; {}; {} run(s) of {:.0} s per server and scenario",
        cpus,
        if pin {
            "server on CPU 0, load on CPU 1"
        } else {
            "not pinned (needs 2 CPUs and taskset)"
        },
        opts.runs,
        opts.seconds
    );

    let started = Instant::now();
    let mut rows = Vec::new();
    for scenario in SCENARIOS.iter() {
        if let Some(only) = &opts.only
            && !scenario.name.starts_with(only.as_str())
        {
            continue;
        }
        let mut app = Vec::new();
        let mut reference = Vec::new();
        // The first server fills the "server-app" column, the second the
        // "reference" column.
        let servers = scenario.compare.unwrap_or([Server::App, Server::Reference]);
        for run in 0..opts.runs {
            for (column, server) in servers.into_iter().enumerate() {
                eprint!(
                    "{} {:?} run {}/{}.. ",
                    scenario.name,
                    server,
                    run + 1,
                    opts.runs
                );
                let sample = measure(&env, scenario, server, opts.seconds)?;
                eprintln!("{:?} (errors {})", sample.values, sample.errors);
                if column == 0 {
                    app.push(sample);
                } else {
                    reference.push(sample);
                }
            }
        }
        rows.extend(table_rows(scenario, &app, &reference));
    }
    print_table(&rows, &env);
    if ws_app_is_reference() && SCENARIOS.iter().any(|s| s.ws && selected(s)) {
        println!();
        println!(
            "ws-* rows: {WS_APP_OVERRIDE}=reference, so the server-app column is reference-echo-ws too."
        );
    }
    eprintln!("benchmark took {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// One line of the table.
#[derive(Debug)]
struct Row {
    scenario: String,
    /// Its columns are two settings of server-app (named in the row).
    workers: bool,
    app: f64,
    reference: f64,
    errors: u64,
    target: String,
    pass: Option<bool>,
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn table_rows(s: &Scenario, app: &[Sample], reference: &[Sample]) -> Vec<Row> {
    let pick = |samples: &[Sample], i: usize| median(samples.iter().map(|x| x.values[i]).collect());
    let errors = app.iter().chain(reference).map(|x| x.errors).sum::<u64>();
    let ratio_target = |app: f64, reference: f64| -> (String, Option<bool>) {
        match s.target {
            Some((limit, at_most)) => {
                let ratio = app / reference;
                let pass = if at_most {
                    ratio <= limit
                } else {
                    ratio >= limit
                };
                let sign = if at_most { "<=" } else { ">=" };
                (format!("{sign} {limit:.2}x"), Some(pass && errors == 0))
            }
            None => (String::new(), None),
        }
    };
    let label = |figure: &str| {
        let framing = if s.framing == "raw" {
            String::new()
        } else {
            format!(", {}", s.framing)
        };
        let workers = match s.compare {
            Some([a, b]) => format!(", {} vs {}, unpinned", a.flags(), b.flags()),
            None => String::new(),
        };
        format!(
            "{} ({}{} conn{}, {} B{}{}{workers}): {figure}",
            s.name,
            if s.tls {
                "TLS 1.3, "
            } else if s.ws {
                "WebSocket, "
            } else {
                ""
            },
            s.clients,
            if s.clients == 1 { "" } else { "s" },
            s.size,
            if s.rate > 0.0 {
                String::new()
            } else if s.figure == Figure::IdleRss {
                ", idle".to_string()
            } else if s.figure == Figure::Handshakes {
                ", full handshake and one echo each".to_string()
            } else {
                format!(", window {}", s.window)
            },
            framing
        )
    };
    match s.figure {
        Figure::Latency => {
            let (p50a, p50r) = (pick(app, 0), pick(reference, 0));
            let (p99a, p99r) = (pick(app, 1), pick(reference, 1));
            let (target, pass) = ratio_target(p99a, p99r);
            vec![
                Row {
                    workers: s.compare.is_some(),
                    scenario: label("p50 round trip, us"),
                    app: p50a,
                    reference: p50r,
                    errors,
                    target: String::new(),
                    pass: None,
                },
                Row {
                    workers: s.compare.is_some(),
                    scenario: label("p99 round trip, us"),
                    app: p99a,
                    reference: p99r,
                    errors,
                    target,
                    pass,
                },
            ]
        }
        Figure::MsgsPerSec | Figure::MbPerSec => {
            let (a, r) = (pick(app, 0), pick(reference, 0));
            let (target, pass) = ratio_target(a, r);
            let what = if s.figure == Figure::MsgsPerSec {
                "msgs/s"
            } else {
                "MB/s"
            };
            let what = if s.framing == "raw" {
                what.to_string()
            } else {
                format!("{what} (reference: raw)")
            };
            vec![Row {
                workers: s.compare.is_some(),
                scenario: label(&what),
                app: a,
                reference: r,
                errors,
                target,
                pass,
            }]
        }
        Figure::ServerCpu => {
            let (a, r) = (pick(app, 0), pick(reference, 0));
            let (target, pass) = ratio_target(a, r);
            let achieved = median(app.iter().chain(reference).map(|x| x.achieved).collect());
            let sustained = if achieved >= 0.97 * s.rate {
                format!("{:.0} k msgs/s", s.rate / 1e3)
            } else {
                format!(
                    "{:.0} k msgs/s asked, only {:.0} k sustained",
                    s.rate / 1e3,
                    achieved / 1e3
                )
            };
            let reference_note = if s.framing == "raw" {
                ""
            } else {
                " (reference: raw)"
            };
            vec![Row {
                workers: s.compare.is_some(),
                scenario: label(&format!("server CPU %{reference_note} at {sustained}")),
                app: a,
                reference: r,
                errors,
                target,
                pass,
            }]
        }
        Figure::IdleRss => {
            let (a, r) = (pick(app, 0), pick(reference, 0));
            // A ratio where the scenario has one, else issue 11's bytes.
            let (target, pass) = match s.target {
                Some(_) => ratio_target(a, r),
                None => (
                    format!("<= {IDLE_TARGET_BYTES:.0} B"),
                    Some(a <= IDLE_TARGET_BYTES && errors == 0),
                ),
            };
            vec![Row {
                workers: s.compare.is_some(),
                scenario: label("server RSS bytes per connection"),
                app: a,
                reference: r,
                errors,
                target,
                pass,
            }]
        }
        Figure::Handshakes => {
            let (a, r) = (pick(app, 0), pick(reference, 0));
            let (target, pass) = ratio_target(a, r);
            vec![
                Row {
                    workers: s.compare.is_some(),
                    scenario: label("new sessions/s"),
                    app: a,
                    reference: r,
                    errors,
                    target,
                    pass,
                },
                Row {
                    workers: s.compare.is_some(),
                    scenario: label("server CPU us per new session"),
                    app: pick(app, 1),
                    reference: pick(reference, 1),
                    errors,
                    target: String::new(),
                    pass: None,
                },
            ]
        }
    }
}

fn print_table(rows: &[Row], env: &Env) {
    println!();
    println!(
        "| scenario | server-app | reference | ratio | target | result |{}",
        if env.pin { "" } else { " (unpinned)" }
    );
    println!("|---|---:|---:|---:|---|---|");
    for row in rows {
        let result = match (row.errors, row.pass) {
            (e, _) if e > 0 => format!("FAIL ({e} errors)"),
            (_, Some(true)) => "pass".into(),
            (_, Some(false)) => "fail".into(),
            (_, None) => String::new(),
        };
        println!(
            "| {} | {} | {} | {:.2}x | {} | {} |",
            row.scenario,
            fmt_value(row.app),
            fmt_value(row.reference),
            row.app / row.reference,
            row.target,
            result
        );
    }
    if rows.iter().any(|r| r.workers) {
        println!();
        println!(
            "workers-* and reuseport-* rows: the columns are the two server-app settings the \
             row names, the server unpinned{}.",
            if env.pin { ", the load on CPU 1" } else { "" }
        );
    }
}

fn fmt_value(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// A child process that is killed, by its PID, when dropped.
#[derive(Debug)]
struct Guard {
    child: Child,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Builds a command that raises its open-file limit, is pinned to `cpu`
/// (when pinning and `cpu` is `Some`), and runs `program args`.
fn command(env: &Env, cpu: Option<u32>, program: &str, args: &[String]) -> Command {
    // `exec` keeps the PID: the child's PID is the server's own.
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("ulimit -n 20000 2>/dev/null || ulimit -n \"$(ulimit -Hn)\" 2>/dev/null; exec \"$@\"")
        .arg("sh");
    if let (true, Some(cpu)) = (env.pin, cpu) {
        cmd.args(["taskset", "-c", &cpu.to_string()]);
    }
    cmd.arg(env.bin_dir.join(program)).args(args);
    cmd
}

/// A started server: its guard, PID and port.
struct Running {
    guard: Guard,
    pid: u32,
    port: u16,
}

/// Whether [`WS_APP_OVERRIDE`] puts the reference in the server-app column.
fn ws_app_is_reference() -> bool {
    std::env::var(WS_APP_OVERRIDE).is_ok_and(|v| v == "reference")
}

fn start_server(env: &Env, scenario: &Scenario, server: Server) -> Result<Running, String> {
    let tls = match (&env.pki, scenario.tls) {
        (Some(pki), true) => Some(&pki.server),
        _ => None,
    };
    let reference_ws = scenario.ws && (server == Server::Reference || ws_app_is_reference());
    let (program, mut args): (&str, Vec<String>) = match server {
        _ if reference_ws => (
            "reference-echo-ws",
            ["--port", "0", "--host", "127.0.0.1"]
                .map(String::from)
                .to_vec(),
        ),
        Server::Reference if tls.is_some() => (
            "reference-echo-tls",
            ["--port", "0", "--host", "127.0.0.1"]
                .map(String::from)
                .to_vec(),
        ),
        Server::App | Server::Workers(..) => (
            "server-app",
            [
                "--quiet",
                "--suffix",
                "",
                "--port",
                "0",
                "--host",
                "127.0.0.1",
                "--framing",
                scenario.framing,
            ]
            .map(String::from)
            .to_vec(),
        ),
        Server::Reference => (
            "reference-echo",
            ["--port", "0", "--host", "127.0.0.1"]
                .map(String::from)
                .to_vec(),
        ),
    };
    if scenario.ws && !reference_ws {
        args.push("--websocket".to_string());
    }
    if let Some(pem) = tls {
        let (cert, key) = if server == Server::Reference {
            ("--cert", "--key")
        } else {
            ("--tls-cert", "--tls-key")
        };
        args.extend([
            cert.to_string(),
            pem.cert.display().to_string(),
            key.to_string(),
            pem.key.display().to_string(),
        ]);
    }
    let (args, cpu) = match server {
        Server::Workers(n, reuse_port) => {
            let mut args = args;
            args.extend(["--workers".to_string(), n.to_string()]);
            if reuse_port {
                args.push("--reuse-port".to_string());
            }
            (args, None)
        }
        _ => (args, Some(0)),
    };
    let mut cmd = command(env, cpu, program, &args);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd.spawn().map_err(|e| format!("start {program}: {e}"))?;
    let pid = child.id();
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut guard = Guard { child };
    // Read stdout for ever (a server may print per connection; a full pipe
    // would stall it), and hand the address line over.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(rest) = line.strip_prefix("Listening on ") {
                let _ = tx.send(rest.to_string());
            }
        }
    });
    let Ok(addr) = rx.recv_timeout(Duration::from_secs(10)) else {
        // A server that refused its flags has exited (its error went to
        // stderr above); say which run it was.
        // Its stdout has closed: it is exiting, if not gone already.
        let mut exited = None;
        for _ in 0..50 {
            exited = guard.child.try_wait().ok().flatten();
            if exited.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let hint = if scenario.ws && program == "server-app" {
            format!(
                "; a server-app without --websocket fails the ws-* rows (it comes with the \
                 WebSocket core); {WS_APP_OVERRIDE}=reference runs the rows on the reference alone"
            )
        } else {
            String::new()
        };
        return Err(match exited {
            Some(status) => format!(
                "{program} {} exited ({status}) before it listened{hint}",
                args.join(" ")
            ),
            None => format!("{program} did not print 'Listening on' within 10 s{hint}"),
        });
    };
    let first = addr.split(',').next().unwrap_or_default().trim();
    let port = first
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("{program}: cannot read a port from {addr:?}"))?;
    Ok(Running { guard, pid, port })
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(env: &Env, pid: u32) -> Result<f64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("read /proc/{pid}/stat: {e}"))?;
    // Fields after the command name, which ends at the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 here.
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(u), Some(s)) => Ok((u + s) / env.clk_tck),
        _ => Err(format!("unexpected /proc/{pid}/stat")),
    }
}

/// VmRSS of a process in bytes.
fn rss_bytes(pid: u32) -> Result<f64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("read /proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map(|kb| kb * 1024.0)
        .ok_or_else(|| format!("no VmRSS in /proc/{pid}/status"))
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// A number from a one-line JSON object written by client-app.
fn json_number(json: &str, key: &str) -> Option<f64> {
    let needle = format!("\"{key}\":");
    let start = json.find(&needle)? + needle.len();
    let rest = &json[start..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end].trim().parse().ok()
}

/// Waits for a child, killing it after `limit`.
fn wait_output(mut guard: Guard, limit: Duration) -> Result<(String, bool), String> {
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = guard.child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if Instant::now() >= deadline {
            return Err(format!("load did not finish within {} s", limit.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    if let Some(mut stdout) = guard.child.stdout.take() {
        use std::io::Read;
        let _ = stdout.read_to_string(&mut out);
    }
    Ok((out, status.success()))
}

fn measure(env: &Env, s: &Scenario, server: Server, seconds: f64) -> Result<Sample, String> {
    let running = start_server(env, s, server)?;
    let framing = if server == Server::Reference {
        "raw"
    } else {
        s.framing
    };
    let mut args: Vec<String> = vec![
        "--host".into(),
        "127.0.0.1".into(),
        "--port".into(),
        running.port.to_string(),
        "--framing".into(),
        framing.into(),
        "--clients".into(),
        s.clients.to_string(),
        "--size".into(),
        s.size.to_string(),
    ];
    if s.ws {
        args.push("--websocket".into());
    }
    if let (Some(pki), true) = (&env.pki, s.tls) {
        args.extend([
            "--tls".into(),
            "--tls-ca".into(),
            pki.ca.display().to_string(),
            "--tls-server-name".into(),
            "localhost".into(),
        ]);
    }
    if s.figure == Figure::IdleRss {
        return measure_idle(env, &running, args, s.clients, seconds);
    }
    let warmup = (seconds / 5.0).min(1.0);
    if s.figure == Figure::Handshakes {
        args.push("--handshakes".into());
    }
    args.extend([
        "--window".into(),
        s.window.to_string(),
        "--duration".into(),
        format!("{seconds}"),
        "--warmup".into(),
        format!("{warmup}"),
        "--json".into(),
    ]);
    if s.rate > 0.0 {
        args.extend(["--rate".into(), format!("{}", s.rate)]);
    }
    let mut cmd = command(env, Some(1), "client-app", &args);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let client = Guard {
        child: cmd.spawn().map_err(|e| format!("start client-app: {e}"))?,
    };
    let mut cpu = 0.0;
    if matches!(s.figure, Figure::ServerCpu | Figure::Handshakes) {
        // Sample the server's CPU time over the measuring window only.
        std::thread::sleep(Duration::from_secs_f64(warmup + 0.1));
        let t0 = Instant::now();
        let c0 = cpu_seconds(env, running.pid)?;
        std::thread::sleep(Duration::from_secs_f64(seconds - 0.3));
        let c1 = cpu_seconds(env, running.pid)?;
        cpu = (c1 - c0) / t0.elapsed().as_secs_f64() * 100.0;
    }
    let (out, ok) = wait_output(client, Duration::from_secs_f64(seconds + warmup + 30.0))?;
    drop(running.guard);
    let line = out.lines().find(|l| l.starts_with('{')).unwrap_or("");
    let num = |key: &str| json_number(line, key).unwrap_or(f64::NAN);
    let mut errors = json_number(line, "errors").map_or(1, |e| e as u64);
    if !ok && errors == 0 {
        errors = 1;
    }
    let values = match s.figure {
        Figure::Latency => vec![num("p50_us"), num("p99_us")],
        Figure::MsgsPerSec => vec![num("msgs_per_s")],
        Figure::MbPerSec => vec![num("mb_per_s")],
        Figure::ServerCpu => vec![cpu],
        // The server's CPU time per new session as well: with the load
        // generator's own share of each handshake (two signature checks
        // and a key exchange on one CPU) the rate can be the client's
        // limit, the same for both servers; the CPU per session is not.
        Figure::Handshakes => {
            let rate = num("handshakes_per_s");
            vec![rate, cpu / 100.0 / rate * 1e6]
        }
        Figure::IdleRss => unreachable!("measured above"),
    };
    Ok(Sample {
        values,
        achieved: num("msgs_per_s"),
        errors,
    })
}

/// Opens the idle connections and reads the server's RSS growth.
fn measure_idle(
    env: &Env,
    running: &Running,
    mut args: Vec<String>,
    connections: usize,
    seconds: f64,
) -> Result<Sample, String> {
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_bytes(running.pid)?;
    let fds_before = open_fds(running.pid);
    // Hold long enough to be measured; the client is killed when done.
    args.extend([
        "--idle".into(),
        "--duration".into(),
        format!("{}", seconds + 60.0),
    ]);
    let mut cmd = command(env, Some(1), "client-app", &args);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut client = Guard {
        child: cmd.spawn().map_err(|e| format!("start client-app: {e}"))?,
    };
    let stderr = client.child.stderr.take().ok_or("no stderr")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.starts_with("holding") {
                let _ = tx.send(());
            } else {
                eprintln!("client-app: {line}");
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(60))
        .map_err(|_| "the idle client did not open its connections within 60 s".to_string())?;
    // Wait until the server holds them all (bounded), then let it settle.
    let deadline = Instant::now() + Duration::from_secs(20);
    while open_fds(running.pid) < fds_before + connections && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let held = open_fds(running.pid).saturating_sub(fds_before);
    std::thread::sleep(Duration::from_secs_f64((seconds / 2.0).min(2.0)));
    let after = rss_bytes(running.pid)?;
    drop(client);
    let errors = if held < connections {
        (connections - held) as u64
    } else {
        0
    };
    Ok(Sample {
        values: vec![(after - before) / connections as f64],
        achieved: 0.0,
        errors,
    })
}
