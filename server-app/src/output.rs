//! What the programs print, and how: one whole line at a time on stdout;
//! and the command-line pieces both share.
//!
//! Lines go through [`say!`], which writes a line under the stdout lock and
//! ignores a closed pipe (a program whose output is piped into `head` keeps
//! going instead of panicking inside a session callback). Rust's stdout is
//! line-buffered even when piped, so a test reading the pipe sees every line
//! as soon as it is printed.
//!
//! `client-app` uses this file too (`#[path]`): two thin binaries, one copy.

use std::fmt;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

/// Prints one line on stdout; a failed write (closed pipe) is ignored.
pub fn say_line(line: fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_fmt(line).and_then(|()| out.write_all(b"\n"));
}

/// Prints one line on stdout, `format!`-style; see [`say_line`].
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::output::say_line(format_args!($($arg)*))
    };
}
pub(crate) use say;

/// The seed's `GetTimeStamp()`: local time as `[HH:mm:ss]`.
pub fn timestamp() -> impl fmt::Display {
    chrono::Local::now().format("[%H:%M:%S]")
}

/// Bytes shown as text: invalid UTF-8 becomes U+FFFD and control
/// characters are escaped (`\n`, `\r`, `\u{0}`), so one message is always
/// one line of output. Only for display; the echoed bytes are never
/// converted.
pub fn printable(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// A number of seconds, fractions allowed, as a duration (for flags).
pub fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(seconds)
        .map_err(|_| format!("{text:?} is not a non-negative number of seconds"))
}

/// Prints `--help`/`--version` on stdout (success), or the first line of a
/// usage error on stderr (status 2).
pub fn cli_error(e: &structopt::clap::Error) -> ExitCode {
    use structopt::clap::ErrorKind;
    if matches!(
        e.kind,
        ErrorKind::HelpDisplayed | ErrorKind::VersionDisplayed
    ) {
        // Through `say!`: `--help | head` must not panic on the closed pipe.
        say!("{}", e.message);
        return ExitCode::SUCCESS;
    }
    let first = e.message.lines().next().unwrap_or("invalid arguments");
    if first.starts_with("error:") {
        eprintln!("{first}");
    } else {
        eprintln!("error: {first}");
    }
    ExitCode::from(2)
}
