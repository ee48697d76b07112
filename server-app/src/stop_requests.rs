//! Requests from the OS to stop: SIGINT (Ctrl-C) and SIGTERM on Unix;
//! Ctrl-C, Ctrl-Break, closing the console window, log-off and system
//! shutdown on Windows. Each arrives as an async stream item with a name for
//! the user (`SIGTERM`, `Ctrl-Break`, ...), so the server treats them all
//! alike: the first stops accepting and drains, a second stops waiting.
//!
//! Unix uses `signal-hook-async-std`. Its iterator is Unix-only, and the C
//! runtime's `signal()` on Windows knows nothing of a closing console, so
//! Windows registers a console control handler (`SetConsoleCtrlHandler`,
//! from `windows-sys`, which the runtime's own crates already bring in).

use std::io;

/// The stream of stop requests, installed for the whole process.
pub struct StopRequests {
    #[cfg(unix)]
    signals: signal_hook_async_std::Signals,
    #[cfg(windows)]
    events: async_std::channel::Receiver<&'static str>,
}

impl std::fmt::Debug for StopRequests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StopRequests").finish_non_exhaustive()
    }
}

/// Ends a [`StopRequests`] stream from outside: its `next` returns `None`.
#[derive(Debug)]
pub struct Closer {
    #[cfg(unix)]
    handle: signal_hook_async_std::Handle,
    #[cfg(windows)]
    events: async_std::channel::Receiver<&'static str>,
}

impl Closer {
    /// Ends the stream; the handlers stay installed, so a later request
    /// no longer ends the process the default way.
    pub fn close(&self) {
        #[cfg(unix)]
        self.handle.close();
        #[cfg(windows)]
        self.events.close();
    }
}

#[cfg(unix)]
mod imp {
    use std::io;

    use futures::StreamExt;
    use signal_hook::consts::{SIGINT, SIGTERM};

    use super::{Closer, StopRequests};

    pub(super) fn install() -> io::Result<StopRequests> {
        let signals = signal_hook_async_std::Signals::new([SIGINT, SIGTERM])?;
        Ok(StopRequests { signals })
    }

    pub(super) fn closer(requests: &StopRequests) -> Closer {
        Closer {
            handle: requests.signals.handle(),
        }
    }

    pub(super) async fn next(requests: &mut StopRequests) -> Option<&'static str> {
        requests.signals.next().await.map(|signal| match signal {
            SIGINT => "SIGINT",
            SIGTERM => "SIGTERM",
            _ => "a signal",
        })
    }
}

#[cfg(windows)]
mod imp {
    use std::io;
    use std::sync::OnceLock;

    use async_std::channel::{Sender, unbounded};
    use windows_sys::Win32::System::Console::{
        CTRL_BREAK_EVENT, CTRL_C_EVENT, CTRL_CLOSE_EVENT, CTRL_LOGOFF_EVENT, CTRL_SHUTDOWN_EVENT,
    };
    use windows_sys::core::BOOL;

    use super::{Closer, StopRequests};

    /// Where the handler sends; set once, by [`install`].
    static EVENTS: OnceLock<Sender<&'static str>> = OnceLock::new();

    pub(super) fn install() -> io::Result<StopRequests> {
        let (sender, events) = unbounded();
        EVENTS
            .set(sender)
            .map_err(|_| io::Error::other("stop requests are already installed"))?;
        sys::set_console_ctrl_handler(handler)?;
        Ok(StopRequests { events })
    }

    pub(super) fn closer(requests: &StopRequests) -> Closer {
        Closer {
            events: requests.events.clone(),
        }
    }

    pub(super) async fn next(requests: &mut StopRequests) -> Option<&'static str> {
        requests.events.recv().await.ok()
    }

    /// The console control handler. Windows runs it on a thread of its own
    /// for each event, so it may lock and allocate.
    pub(super) extern "system" fn handler(ctrl_type: u32) -> BOOL {
        let name = match ctrl_type {
            CTRL_C_EVENT => "Ctrl-C",
            CTRL_BREAK_EVENT => "Ctrl-Break",
            CTRL_CLOSE_EVENT => "console close",
            CTRL_LOGOFF_EVENT => "log-off",
            CTRL_SHUTDOWN_EVENT => "system shutdown",
            // Not ours: the next handler (in the end the default) decides.
            _ => return 0,
        };
        let Some(events) = EVENTS.get() else { return 0 };
        // A closed channel means the server has stopped listening for
        // requests and is about to return: nothing more to do.
        let _ = events.try_send(name);
        if matches!(ctrl_type, CTRL_C_EVENT | CTRL_BREAK_EVENT) {
            return 1;
        }
        // After close, log-off and shutdown, Windows ends the process as
        // soon as a handler returns (or after its own deadline, 5 s for a
        // closed console). Returning would cut the drain short and exit
        // with STATUS_CONTROL_C_EXIT: keep this thread until `main`
        // returns and the process exits with the server's own status.
        loop {
            std::thread::park();
        }
    }

    /// The one unsafe call: registering the handler.
    #[allow(unsafe_code)]
    mod sys {
        use std::io;

        use windows_sys::Win32::System::Console::SetConsoleCtrlHandler;
        use windows_sys::core::BOOL;

        pub(in super::super) fn set_console_ctrl_handler(
            handler: extern "system" fn(u32) -> BOOL,
        ) -> io::Result<()> {
            // SAFETY: `handler` is a plain function that lives as long as the
            // process and touches nothing but a static channel.
            if unsafe { SetConsoleCtrlHandler(Some(handler), 1) } == 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        }
    }
}

impl StopRequests {
    /// Installs the handlers. From this moment on, a stop request is an
    /// item of this stream and never the default death of the process.
    /// Once per process.
    pub fn install() -> io::Result<StopRequests> {
        imp::install()
    }

    /// A handle that ends this stream (see [`Closer::close`]).
    pub fn closer(&self) -> Closer {
        imp::closer(self)
    }

    /// The next request, by name (`SIGINT`, `SIGTERM`, `Ctrl-C`,
    /// `Ctrl-Break`, `console close`, ...); `None` once closed.
    pub async fn next(&mut self) -> Option<&'static str> {
        imp::next(self).await
    }
}

/// Windows only: the handler, called as Windows calls it (no console
/// needed), turns each control event into its named request.
#[cfg(all(test, windows))]
mod tests {
    use windows_sys::Win32::System::Console::{CTRL_BREAK_EVENT, CTRL_C_EVENT};

    use super::{StopRequests, imp};

    #[test]
    fn console_events_become_named_requests() {
        let mut requests = StopRequests::install().expect("install the console handler");
        assert_eq!(imp::handler(CTRL_C_EVENT), 1, "Ctrl-C is handled");
        assert_eq!(imp::handler(CTRL_BREAK_EVENT), 1, "Ctrl-Break is handled");
        assert_eq!(
            imp::handler(0xbad),
            0,
            "an unknown event is left to Windows"
        );
        async_std::task::block_on(async {
            assert_eq!(requests.next().await, Some("Ctrl-C"));
            assert_eq!(requests.next().await, Some("Ctrl-Break"));
            requests.closer().close();
            assert_eq!(requests.next().await, None);
        });
        assert!(
            StopRequests::install().is_err(),
            "a second install is refused"
        );
    }
}
