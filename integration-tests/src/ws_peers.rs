//! Real WebSocket peers for the tests: Python's `websockets` package (in a
//! virtual environment that `.ci/run` makes) and headless Chromium, with
//! the scripts in `integration-tests/peers/`.
//!
//! Each finder follows [`crate::process`]'s rule for a missing tool: under
//! `CI` the test fails (CI must install it), elsewhere it prints that it
//! skipped and why, and the caller returns.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::process::{fail_if_ci, find_program};

/// The environment variable naming the Python interpreter that has
/// `websockets` (the virtual environment's `bin/python`).
pub const WS_PYTHON: &str = "WS_PYTHON";

/// The `websockets` version `.ci/run` installs.
pub const WEBSOCKETS_VERSION: &str = "15.0.1";

/// The workspace folder.
fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace folder")
}

/// Where `.ci/run` makes the virtual environment's Python when
/// [`WS_PYTHON`] is not set: `target/ws-venv/bin/python` in the workspace.
pub fn default_ws_python() -> PathBuf {
    workspace().join("target/ws-venv/bin/python")
}

/// The path of the peer script `name` (in `integration-tests/peers/`).
pub fn peer_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("peers")
        .join(name)
}

/// Prints that the calling test skipped and why, for a run outside CI.
fn skip(why: &str) {
    eprintln!("skipped: {why}");
}

/// A Python that can `import websockets`: [`WS_PYTHON`], else
/// [`default_ws_python`]. `None` (the caller skips) when there is none,
/// a panic under `CI`.
#[track_caller]
pub fn ws_python() -> Option<PathBuf> {
    let python = std::env::var_os(WS_PYTHON).map_or_else(default_ws_python, PathBuf::from);
    let works = Command::new(&python)
        .args(["-c", "import websockets"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if works {
        return Some(python);
    }
    let missing = format!(
        "a Python with websockets ({} or {WS_PYTHON}; {} does not import it)",
        default_ws_python().display(),
        python.display()
    );
    fail_if_ci(
        &missing,
        &format!(
            "python3-venv and a virtual environment with websockets=={WEBSOCKETS_VERSION} \
             (.ci/run makes it)"
        ),
    );
    skip(&format!("{missing} is not there; .ci/run makes it"));
    None
}

/// Chromium (`chromium`, as Debian names it, else `chromium-browser` or
/// `google-chrome`, as other systems do). `None` (the caller skips) when
/// none is installed, a panic under `CI`.
#[track_caller]
pub fn chromium() -> Option<PathBuf> {
    if let Some(path) = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find_map(|name| find_program(name, &[]))
    {
        return Some(path);
    }
    fail_if_ci("chromium", "chromium");
    skip("chromium is not installed (apt-get install chromium)");
    None
}

/// Lowercase hex of `bytes`, as the peer scripts print payloads.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of lowercase (or uppercase) hex `text`; panics on anything
/// else.
#[track_caller]
pub fn unhex(text: &str) -> Vec<u8> {
    assert!(text.len().is_multiple_of(2), "odd hex length: {text:?}");
    (0..text.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&text[i..i + 2], 16)
                .unwrap_or_else(|_| panic!("not hex: {:?}", &text[i..i + 2]))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(unhex(&hex(&bytes)), bytes);
        assert_eq!(hex(b"Hi"), "4869");
    }
}
