//! What is not available on every OS says so, instead of failing oddly.
//!
//! - Off Linux, `client-app --clients N` (the load mode, an epoll loop)
//!   ends with one line saying it needs Linux, and status 1
//!   (`load_mode.rs` tests the mode itself, on Linux).
//! - On Windows, `SessionConfig::reuse_port` (SO_REUSEPORT, which Windows
//!   lacks) makes `Listener::bind` fail as `Unsupported` (`reuse_port.rs`
//!   tests the option, on Unix).
//!
//! On Linux this file has no tests.

#[cfg(not(target_os = "linux"))]
#[test]
fn load_mode_off_linux_says_it_needs_linux() {
    use integration_tests::process::Proc;

    // It connects first: something must listen (the backlog accepts).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().unwrap().port().to_string();
    let client = Proc::app(
        "client-app",
        &["--host", "127.0.0.1", "--port", &port, "--clients", "1"],
    )
    .finish();
    assert_eq!(client.status.code(), Some(1), "{client:#?}");
    assert_eq!(
        client.stderr.trim_end(),
        "error: the load mode needs Linux (epoll)",
        "{client:#?}"
    );
}

#[cfg(windows)]
#[test]
fn reuse_port_on_windows_is_refused_as_unsupported() {
    use session_core::{IpInformation, Listener, SessionConfig};

    let config = SessionConfig {
        reuse_port: true,
        ..SessionConfig::default()
    };
    let result = async_std::task::block_on(async {
        let ip = IpInformation::resolve("127.0.0.1", 0).await?;
        Listener::bind(&ip, config).await
    });
    let error = result.expect_err("bind with reuse_port must fail on Windows");
    assert_eq!(error.kind(), std::io::ErrorKind::Unsupported, "{error}");
}
