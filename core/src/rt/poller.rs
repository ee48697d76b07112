//! One readiness poller per worker: epoll on Linux, called directly, each
//! socket registered once, edge-triggered.
//!
//! The `polling` crate would do, but its Linux backend arms a timerfd and
//! re-registers it on every wait: two more system calls per wake-up, which
//! on this project's machines is a sixth of an echo's whole cost. Other
//! systems use `polling` (kqueue, IOCP, ...) in its edge-triggered mode.

/// What a poller can watch: a socket of the platform.
#[cfg(unix)]
pub(crate) use std::os::fd::AsFd as AsSource;
#[cfg(windows)]
pub(crate) use std::os::windows::io::AsSocket as AsSource;

/// What one ready socket can do now.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Readiness {
    pub(crate) key: usize,
    pub(crate) readable: bool,
    pub(crate) writable: bool,
    /// The peer closed its side, or the socket failed: a read will not
    /// block again (it returns the end or the error).
    pub(crate) read_closed: bool,
}

#[cfg(target_os = "linux")]
pub(crate) use linux::{Events, Poller};

#[cfg(not(target_os = "linux"))]
pub(crate) use portable::{Events, Poller};

#[cfg(target_os = "linux")]
mod linux {
    use std::io;
    use std::os::fd::OwnedFd;

    use rustix::buffer::spare_capacity;
    use rustix::event::epoll::{self, CreateFlags, Event, EventData, EventFlags};
    use rustix::event::{EventfdFlags, Timespec, eventfd};

    use super::{AsSource, Readiness};

    /// The key of the eventfd that wakes a blocked wait.
    const NOTIFY: u64 = u64::MAX;

    pub(crate) struct Poller {
        epoll: OwnedFd,
        wake: OwnedFd,
    }

    pub(crate) struct Events(Vec<Event>);

    impl Events {
        pub(crate) fn new() -> Events {
            Events(Vec::with_capacity(1024))
        }

        pub(crate) fn iter(&self) -> impl Iterator<Item = Readiness> + '_ {
            self.0.iter().filter_map(|event| {
                let (flags, key) = (event.flags, event.data.u64());
                (key != NOTIFY).then(|| Readiness {
                    key: key as usize,
                    readable: flags.intersects(
                        EventFlags::IN | EventFlags::HUP | EventFlags::ERR | EventFlags::RDHUP,
                    ),
                    writable: flags.intersects(EventFlags::OUT | EventFlags::HUP | EventFlags::ERR),
                    read_closed: flags
                        .intersects(EventFlags::HUP | EventFlags::ERR | EventFlags::RDHUP),
                })
            })
        }
    }

    impl Poller {
        pub(crate) fn new() -> io::Result<Poller> {
            let epoll = epoll::create(CreateFlags::CLOEXEC)?;
            let wake = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
            epoll::add(&epoll, &wake, EventData::new_u64(NOTIFY), EventFlags::IN)?;
            Ok(Poller { epoll, wake })
        }

        /// Watches `socket` for reading and writing, edge-triggered, under `key`.
        pub(crate) fn add(&self, socket: &impl AsSource, key: usize) -> io::Result<()> {
            let flags = EventFlags::IN | EventFlags::OUT | EventFlags::RDHUP | EventFlags::ET;
            Ok(epoll::add(
                &self.epoll,
                socket,
                EventData::new_u64(key as u64),
                flags,
            )?)
        }

        pub(crate) fn delete(&self, socket: &impl AsSource) -> io::Result<()> {
            Ok(epoll::delete(&self.epoll, socket)?)
        }

        /// Wakes a blocked [`wait`](Self::wait), or makes the next one return at once.
        pub(crate) fn notify(&self) {
            let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
        }

        /// Waits for events (not at all unless `block`), replacing `events`.
        pub(crate) fn wait(&self, events: &mut Events, block: bool) -> io::Result<()> {
            events.0.clear();
            let now = Timespec::default();
            let timeout = if block { None } else { Some(&now) };
            loop {
                match epoll::wait(&self.epoll, spare_capacity(&mut events.0), timeout) {
                    Ok(_) => break,
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            if events.0.iter().any(|event| event.data.u64() == NOTIFY) {
                let mut count = [0u8; 8];
                let _ = rustix::io::read(&self.wake, &mut count);
            }
            Ok(())
        }
    }
}

// `Poller::add_with_mode` is unsafe: the socket must leave the poller
// before it is closed, which `TcpStream::drop` in `worker` guarantees.
#[cfg(any(not(target_os = "linux"), test))]
#[allow(dead_code, unsafe_code)]
mod portable {
    use std::io;
    use std::time::Duration;

    use super::{AsSource, Readiness};

    pub(crate) struct Poller(polling::Poller);

    /// The socket as the borrowed handle `polling` takes.
    #[cfg(unix)]
    fn borrowed(socket: &impl AsSource) -> std::os::fd::BorrowedFd<'_> {
        socket.as_fd()
    }

    /// The socket as the borrowed handle `polling` takes.
    #[cfg(windows)]
    fn borrowed(socket: &impl AsSource) -> std::os::windows::io::BorrowedSocket<'_> {
        socket.as_socket()
    }

    pub(crate) struct Events(polling::Events);

    impl Events {
        pub(crate) fn new() -> Events {
            Events(polling::Events::new())
        }

        pub(crate) fn iter(&self) -> impl Iterator<Item = Readiness> + '_ {
            self.0.iter().map(|event| Readiness {
                key: event.key,
                readable: event.readable,
                writable: event.writable,
                // Not told apart here; only Linux skips reads on it.
                read_closed: false,
            })
        }
    }

    impl Poller {
        pub(crate) fn new() -> io::Result<Poller> {
            polling::Poller::new().map(Poller)
        }

        pub(crate) fn add(&self, socket: &impl AsSource, key: usize) -> io::Result<()> {
            // SAFETY: the worker deletes the socket from this poller before
            // the socket is closed (`TcpStream::drop`).
            unsafe {
                self.0.add_with_mode(
                    &borrowed(socket),
                    polling::Event::all(key),
                    polling::PollMode::Edge,
                )
            }
        }

        pub(crate) fn delete(&self, socket: &impl AsSource) -> io::Result<()> {
            self.0.delete(socket)
        }

        pub(crate) fn notify(&self) {
            let _ = self.0.notify();
        }

        pub(crate) fn wait(&self, events: &mut Events, block: bool) -> io::Result<()> {
            events.0.clear();
            let timeout = if block { None } else { Some(Duration::ZERO) };
            self.0.wait(&mut events.0, timeout).map(|_| ())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};

    /// Both backends: a registered socket reports readable once data
    /// arrives, and `notify` ends a blocking wait.
    macro_rules! poller_test {
        ($name:ident, $module:path) => {
            #[test]
            fn $name() {
                use $module as backend;
                let poller = backend::Poller::new().unwrap();
                let listener = TcpListener::bind("127.0.0.1:0").unwrap();
                let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
                let (server, _) = listener.accept().unwrap();
                server.set_nonblocking(true).unwrap();
                poller.add(&server, 7).unwrap();
                let mut events = backend::Events::new();
                client.write_all(b"x").unwrap();
                let mut readable = false;
                for _ in 0..100 {
                    poller.wait(&mut events, true).unwrap();
                    if events.iter().any(|r| r.key == 7 && r.readable) {
                        readable = true;
                        break;
                    }
                }
                assert!(readable);
                poller.notify();
                poller.wait(&mut events, true).unwrap();
                assert!(
                    events.iter().all(|r| r.key == 7),
                    "the wake-up is not a socket"
                );
                poller.delete(&server).unwrap();
            }
        };
    }

    #[cfg(target_os = "linux")]
    poller_test!(epoll_backend_reports_readiness_and_wakes, super::linux);
    poller_test!(polling_backend_reports_readiness_and_wakes, super::portable);
}
