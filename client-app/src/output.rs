//! What the client prints, and how: one whole line at a time on stdout.
//!
//! Lines go through [`say!`], which writes a line under the stdout lock and
//! ignores a closed pipe instead of panicking inside a session callback.
//! Rust's stdout is line-buffered even when piped, so a test reading the
//! pipe sees every line as soon as it is printed. (The same helpers as
//! `server-app`'s; two binaries, no shared app crate.)

use std::fmt;
use std::io::Write;

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
