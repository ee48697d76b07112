//! One readiness poller per worker: epoll on Linux, called directly, each
//! socket registered once, edge-triggered.
//!
//! The `polling` crate would do, but its Linux backend arms a timerfd and
//! re-registers it on every wait: two more system calls per wake-up, which
//! on this project's machines is a sixth of an echo's whole cost. Other
//! systems use `polling` (kqueue, IOCP, ...): edge-triggered where the
//! system can (`Poller::supports_edge`), else oneshot, where a socket is
//! re-armed (`modify`) for the directions a task waits on once it has
//! found nothing to do ([`Mode::Oneshot`]). polling's IOCP backend
//! (Windows) refuses edge-triggered registration.
//!
//! A wait takes a timeout: the worker's next timer deadline. On Linux it is
//! `epoll_wait`'s own argument (in milliseconds, rounded up), so timers add
//! no system call to a wait.

use std::time::Duration;

/// What a poller can watch: a socket of the platform.
#[cfg(unix)]
pub(crate) use std::os::fd::AsFd as AsSource;
#[cfg(windows)]
pub(crate) use std::os::windows::io::AsSocket as AsSource;

/// How a poller reports readiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Each socket registered once for both directions; an event says that
    /// something changed.
    Edge,
    /// A socket is watched only for the directions it was armed for, and
    /// one event disarms it: a task re-arms the direction it waits on.
    Oneshot,
}

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

/// The longest single wait: beyond it a wait returns and the worker looks
/// at its timers again (keeps the timeout in `epoll_wait`'s `int`).
const LONGEST_WAIT: Duration = Duration::from_secs(3600);

#[cfg(all(target_os = "linux", not(test)))]
pub(crate) use linux::{Events, Poller};

#[cfg(not(target_os = "linux"))]
pub(crate) use portable::{Events, Poller};

#[cfg(all(target_os = "linux", test))]
pub(crate) use either::{Events, Poller};

#[cfg(target_os = "linux")]
mod linux {
    use std::io;
    use std::os::fd::OwnedFd;
    use std::time::Duration;

    use rustix::buffer::spare_capacity;
    use rustix::event::epoll::{self, CreateFlags, Event, EventData, EventFlags};
    use rustix::event::{EventfdFlags, Timespec, eventfd};

    use super::{AsSource, LONGEST_WAIT, Mode, Readiness};

    /// The key of the eventfd that wakes a blocked wait.
    const NOTIFY: u64 = u64::MAX;

    pub(crate) struct Poller {
        epoll: OwnedFd,
        wake: OwnedFd,
    }

    pub(crate) struct Events(pub(super) Vec<Event>);

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

        /// Every socket is edge-triggered here.
        #[inline]
        pub(crate) const fn mode(&self) -> Mode {
            Mode::Edge
        }

        /// Never called: edge-triggered sockets need no re-arming.
        pub(crate) fn rearm(
            &self,
            _: &impl AsSource,
            _: usize,
            _: bool,
            _: bool,
        ) -> io::Result<()> {
            Ok(())
        }

        /// Waits for events for at most `timeout` (`None`: until one comes),
        /// replacing `events`.
        pub(crate) fn wait(
            &self,
            events: &mut Events,
            timeout: Option<Duration>,
        ) -> io::Result<()> {
            events.0.clear();
            let timeout = timeout.map(|t| {
                let t = t.min(LONGEST_WAIT);
                Timespec {
                    tv_sec: t.as_secs() as _,
                    tv_nsec: t.subsec_nanos() as _,
                }
            });
            loop {
                match epoll::wait(&self.epoll, spare_capacity(&mut events.0), timeout.as_ref()) {
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
#[allow(unsafe_code)]
mod portable {
    use std::io;
    use std::time::Duration;

    use super::{AsSource, LONGEST_WAIT, Mode, Readiness};

    pub(crate) struct Poller {
        poller: polling::Poller,
        mode: Mode,
    }

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

    pub(crate) struct Events(pub(super) polling::Events);

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
        /// Edge-triggered where the system's poller can be, else oneshot.
        #[cfg_attr(target_os = "linux", allow(dead_code))]
        pub(crate) fn new() -> io::Result<Poller> {
            let poller = polling::Poller::new()?;
            let mode = if poller.supports_edge() {
                Mode::Edge
            } else {
                Mode::Oneshot
            };
            Ok(Poller { poller, mode })
        }

        /// Oneshot even where edge-triggering works: the mode of systems
        /// that lack it, testable anywhere.
        #[cfg_attr(not(test), allow(dead_code))]
        pub(crate) fn oneshot() -> io::Result<Poller> {
            Ok(Poller {
                poller: polling::Poller::new()?,
                mode: Mode::Oneshot,
            })
        }

        #[inline]
        pub(crate) fn mode(&self) -> Mode {
            self.mode
        }

        /// Edge mode: watches both directions from now on. Oneshot mode:
        /// watches nothing until [`rearm`](Self::rearm).
        pub(crate) fn add(&self, socket: &impl AsSource, key: usize) -> io::Result<()> {
            let (interest, mode) = match self.mode {
                Mode::Edge => (polling::Event::all(key), polling::PollMode::Edge),
                Mode::Oneshot => (polling::Event::none(key), polling::PollMode::Oneshot),
            };
            // SAFETY: the worker deletes the socket from this poller before
            // the socket is closed (`TcpStream::drop`).
            unsafe { self.poller.add_with_mode(&borrowed(socket), interest, mode) }
        }

        /// Oneshot mode: watches `socket` for one event in the directions
        /// given.
        pub(crate) fn rearm(
            &self,
            socket: &impl AsSource,
            key: usize,
            read: bool,
            write: bool,
        ) -> io::Result<()> {
            let mut interest = polling::Event::none(key);
            interest.readable = read;
            interest.writable = write;
            self.poller.modify(borrowed(socket), interest)
        }

        pub(crate) fn delete(&self, socket: &impl AsSource) -> io::Result<()> {
            self.poller.delete(borrowed(socket))
        }

        pub(crate) fn notify(&self) {
            let _ = self.poller.notify();
        }

        pub(crate) fn wait(
            &self,
            events: &mut Events,
            timeout: Option<Duration>,
        ) -> io::Result<()> {
            events.0.clear();
            let timeout = timeout.map(|t| t.min(LONGEST_WAIT));
            self.poller.wait(&mut events.0, timeout).map(|_| ())
        }
    }
}

/// Tests on Linux choose the backend at run time, to drive the portable one
/// (in oneshot mode) through real sessions; the library itself uses epoll.
#[cfg(all(target_os = "linux", test))]
mod either {
    use std::io;
    use std::time::Duration;

    use super::{AsSource, Mode, Readiness, linux, portable};

    pub(crate) enum Poller {
        Epoll(linux::Poller),
        Portable(portable::Poller),
    }

    /// Room for either backend's events; the one not in use stays empty.
    pub(crate) struct Events {
        epoll: linux::Events,
        portable: portable::Events,
    }

    impl Events {
        pub(crate) fn new() -> Events {
            Events {
                epoll: linux::Events::new(),
                portable: portable::Events::new(),
            }
        }

        pub(crate) fn iter(&self) -> impl Iterator<Item = Readiness> + '_ {
            self.epoll.iter().chain(self.portable.iter())
        }
    }

    impl Poller {
        pub(crate) fn new() -> io::Result<Poller> {
            linux::Poller::new().map(Poller::Epoll)
        }

        pub(crate) fn oneshot() -> io::Result<Poller> {
            portable::Poller::oneshot().map(Poller::Portable)
        }

        pub(crate) fn mode(&self) -> Mode {
            match self {
                Poller::Epoll(p) => p.mode(),
                Poller::Portable(p) => p.mode(),
            }
        }

        pub(crate) fn add(&self, socket: &impl AsSource, key: usize) -> io::Result<()> {
            match self {
                Poller::Epoll(p) => p.add(socket, key),
                Poller::Portable(p) => p.add(socket, key),
            }
        }

        pub(crate) fn rearm(
            &self,
            socket: &impl AsSource,
            key: usize,
            read: bool,
            write: bool,
        ) -> io::Result<()> {
            match self {
                Poller::Epoll(p) => p.rearm(socket, key, read, write),
                Poller::Portable(p) => p.rearm(socket, key, read, write),
            }
        }

        pub(crate) fn delete(&self, socket: &impl AsSource) -> io::Result<()> {
            match self {
                Poller::Epoll(p) => p.delete(socket),
                Poller::Portable(p) => p.delete(socket),
            }
        }

        pub(crate) fn notify(&self) {
            match self {
                Poller::Epoll(p) => p.notify(),
                Poller::Portable(p) => p.notify(),
            }
        }

        pub(crate) fn wait(
            &self,
            events: &mut Events,
            timeout: Option<Duration>,
        ) -> io::Result<()> {
            match self {
                Poller::Epoll(p) => {
                    events.portable.0.clear();
                    p.wait(&mut events.epoll, timeout)
                }
                Poller::Portable(p) => {
                    events.epoll.0.clear();
                    p.wait(&mut events.portable, timeout)
                }
            }
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::time::{Duration, Instant};

    use super::{Events, Mode, Poller};

    /// Both backends: a registered socket reports readable once data
    /// arrives, and `notify` ends a blocking wait.
    macro_rules! poller_test {
        ($name:ident, $new:expr) => {
            #[test]
            fn $name() {
                let poller = $new.unwrap();
                let listener = TcpListener::bind("127.0.0.1:0").unwrap();
                let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
                let (server, _) = listener.accept().unwrap();
                server.set_nonblocking(true).unwrap();
                poller.add(&server, 7).unwrap();
                if poller.mode() == Mode::Oneshot {
                    poller.rearm(&server, 7, true, false).unwrap();
                }
                let mut events = Events::new();
                client.write_all(b"x").unwrap();
                let mut readable = false;
                for _ in 0..100 {
                    poller.wait(&mut events, None).unwrap();
                    if events.iter().any(|r| r.key == 7 && r.readable) {
                        readable = true;
                        break;
                    }
                }
                assert!(readable);
                poller.notify();
                poller.wait(&mut events, None).unwrap();
                assert!(
                    events.iter().all(|r| r.key == 7),
                    "the wake-up is not a socket"
                );
                // A wait with a timeout returns once it has passed.
                let started = Instant::now();
                poller
                    .wait(&mut events, Some(Duration::from_millis(20)))
                    .unwrap();
                if poller.mode() == Mode::Oneshot {
                    assert!(
                        events.iter().all(|r| r.key != 7),
                        "a oneshot socket reported again before it was re-armed"
                    );
                }
                assert!(started.elapsed() >= Duration::from_millis(19));
                poller.delete(&server).unwrap();
            }
        };
    }

    poller_test!(epoll_backend_reports_readiness_and_wakes, Poller::new());
    poller_test!(
        polling_oneshot_backend_reports_readiness_and_wakes,
        Poller::oneshot()
    );
}
