//! The chat server's logic, shared by `chat_server.rs`, its tests and the
//! fan-out benchmark (each includes this file with `#[path]`).
//!
//! One [`JobQueue`] owns every room, nick and member: a session's callbacks
//! never touch that state, they push a job, so the room logic runs one job at
//! a time and no lock is ever held across I/O. A message is framed once
//! ([`Frame`]) and queued for every receiver by [`Registry::broadcast`],
//! which shares that one buffer and never waits for anyone: a receiver over
//! its send-queue cap is closed as a slow consumer and the room goes on.
//!
//! The protocol, one line per message (use [`Framing::Lines`]):
//!
//! - `/nick NAME`: change nick (1 to 32 bytes, no spaces, unique, and not
//!   starting with `guest-`, the prefix of the nick every session starts
//!   with).
//! - `/join ROOM`: leave the current room and enter `ROOM` (created on first
//!   use). Every session starts in `lobby`.
//! - `/who`: the nicks in your room.
//! - `/quit`: say goodbye and close.
//! - any other line is said to your room as `NICK: text`. The sender does
//!   **not** get its own line back (as in IRC): its client already shows it.
//!
//! Lines from the server: `NICK: text` (a message), `* ...` (a notice:
//! `* NICK joined ROOM` to the whole room, joiner included; `* NICK left
//! ROOM` to those who stay; `* OLD is now NEW`), `! ...` (an error, to you
//! only). A disconnect is a leave.
//!
//! WebSocket members (a listener with
//! [`Listener::with_websocket`](session_core::Listener::with_websocket): a
//! browser) share the rooms: each of their text messages is one line, and
//! every line comes to them as one text message.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use session_core::{
    DisconnectReason, Frame, Framing, JobQueue, Listener, MessageKind, PushError, Registry,
    Session, SessionHandle, SessionId,
};

/// The room every session starts in.
pub const LOBBY: &str = "lobby";
/// Longest nick or room name, in bytes.
pub const MAX_NAME: usize = 32;
/// Longest message text, in bytes.
pub const MAX_TEXT: usize = 1024;
/// Jobs that may wait in the room queue at once.
const QUEUE_CAPACITY: usize = 64 * 1024;
/// Jobs one session may have waiting at once; past it the session is closed
/// (its callbacks cannot wait, so this is where a flood stops).
const MAX_PENDING_PER_SESSION: usize = 4096;
/// Longest frame the chat makes (the most a session accepts by default).
const MAX_OUT: usize = 65_533;
/// A `/who` answer is cut into lines of about this many bytes.
const WHO_LINE: usize = 900;

/// The help shown on connect and after an unknown command.
pub const COMMANDS: &str = "/nick, /join, /who, /quit";

/// Counters of one chat server, readable from any thread.
#[derive(Debug, Default)]
pub struct ChatStats {
    /// Sessions that entered the chat.
    pub connected: AtomicU64,
    /// Sessions that left it (quit or disconnected).
    pub disconnected: AtomicU64,
    /// Members now.
    pub members: AtomicUsize,
    /// Messages said to a room.
    pub messages: AtomicU64,
    /// Frames queued for receivers by broadcasts (messages and notices).
    pub deliveries: AtomicU64,
    /// Sessions that ended as slow consumers.
    pub slow_consumers: AtomicU64,
    /// Sessions closed for having too many jobs waiting.
    pub flooders: AtomicU64,
}

/// A chat server: the room state's job queue and its counters. Clone it
/// freely; every clone is the same chat.
#[derive(Debug, Clone)]
pub struct Chat {
    jobs: JobQueue<Rooms>,
    stats: Arc<ChatStats>,
}

impl Default for Chat {
    fn default() -> Self {
        Chat::new()
    }
}

/// Runs a chat on `listener` until the listener is shut down (see
/// [`Listener::shutdown_handle`]).
pub async fn serve(listener: Listener) -> io::Result<()> {
    Chat::new().run(listener).await
}

impl Chat {
    /// A chat with no members; starts the task that owns the rooms.
    pub fn new() -> Chat {
        let stats = Arc::new(ChatStats::default());
        let rooms = Rooms {
            members: HashMap::new(),
            rooms: HashMap::new(),
            nicks: HashSet::new(),
            framing: Framing::Lines,
            stats: Arc::clone(&stats),
        };
        Chat {
            jobs: JobQueue::spawn(rooms, QUEUE_CAPACITY),
            stats,
        }
    }

    /// The chat's counters.
    pub fn stats(&self) -> Arc<ChatStats> {
        Arc::clone(&self.stats)
    }

    /// A session for one new connection.
    pub fn session(&self) -> ChatSession {
        ChatSession {
            chat: self.clone(),
            pending: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Serves `listener` until it is shut down.
    pub async fn run(self, listener: Listener) -> io::Result<()> {
        listener.run(move || self.session()).await
    }
}

/// One connection's part of the chat: turns its lines into room jobs.
#[derive(Debug)]
pub struct ChatSession {
    chat: Chat,
    /// Jobs of this session pushed and not yet run.
    pending: Arc<AtomicUsize>,
}

/// What one line asks for.
enum Command {
    Nick(String),
    Join(String),
    Who,
    Quit,
    Say(String),
    Unknown(String),
    Usage(&'static str),
    TooLong,
}

fn parse(line: &[u8]) -> Option<Command> {
    let line = String::from_utf8_lossy(line);
    let line = line.trim_end();
    if line.trim().is_empty() {
        return None;
    }
    if !line.starts_with('/') {
        if line.len() > MAX_TEXT {
            return Some(Command::TooLong);
        }
        return Some(Command::Say(line.to_owned()));
    }
    // The argument is the rest of the line, so that `/nick a b` is refused
    // for its space rather than cut to `a`.
    let (command, argument) = match line.split_once(char::is_whitespace) {
        Some((command, rest)) => (command, rest.trim()),
        None => (line, ""),
    };
    Some(match (command, argument.is_empty()) {
        ("/nick", false) => Command::Nick(argument.to_owned()),
        ("/nick", true) => Command::Usage("! usage: /nick NAME"),
        ("/join", false) => Command::Join(argument.to_owned()),
        ("/join", true) => Command::Usage("! usage: /join ROOM"),
        ("/who", true) => Command::Who,
        ("/who", false) => Command::Usage("! usage: /who"),
        ("/quit", _) => Command::Quit,
        (other, _) => Command::Unknown(other.chars().take(MAX_NAME).collect()),
    })
}

impl ChatSession {
    /// Pushes a job for this session; closes the session if the chat cannot
    /// take it (too many of its jobs waiting, or the whole queue full).
    fn push(&self, handle: &SessionHandle, job: impl FnOnce(&mut Rooms) + Send + 'static) {
        if self.pending.fetch_add(1, Ordering::AcqRel) >= MAX_PENDING_PER_SESSION {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            self.flood(handle);
            return;
        }
        let pending = Arc::clone(&self.pending);
        let result = self.chat.jobs.push(move |rooms| {
            pending.fetch_sub(1, Ordering::AcqRel);
            job(rooms);
        });
        match result {
            Ok(()) => {}
            Err(PushError::Full) => {
                self.pending.fetch_sub(1, Ordering::AcqRel);
                self.flood(handle);
            }
            Err(PushError::Closed) => handle.disconnect(),
        }
    }

    fn flood(&self, handle: &SessionHandle) {
        if handle.is_connected() {
            self.chat.stats.flooders.fetch_add(1, Ordering::Relaxed);
            let _ = handle.send(b"! too many lines waiting; closing");
            handle.disconnect();
        }
    }
}

impl Session for ChatSession {
    fn on_connected(&mut self, handle: &SessionHandle) {
        let joining = handle.clone();
        self.push(handle, move |rooms| rooms.connect(joining));
    }

    fn on_received(&mut self, handle: &SessionHandle, message: &[u8]) {
        let Some(command) = parse(message) else {
            return;
        };
        let id = handle.id();
        match command {
            Command::Nick(name) => self.push(handle, move |rooms| rooms.nick(id, name)),
            Command::Join(room) => self.push(handle, move |rooms| rooms.join(id, room)),
            Command::Who => self.push(handle, move |rooms| rooms.who(id)),
            Command::Quit => self.push(handle, move |rooms| rooms.quit(id)),
            Command::Say(text) => self.push(handle, move |rooms| rooms.say(id, &text)),
            Command::Unknown(command) => self.push(handle, move |rooms| {
                rooms.tell(id, &format!("! unknown command {command}; try {COMMANDS}"))
            }),
            Command::Usage(usage) => self.push(handle, move |rooms| rooms.tell(id, usage)),
            Command::TooLong => self.push(handle, move |rooms| {
                rooms.tell(
                    id,
                    &format!("! message too long (at most {MAX_TEXT} bytes)"),
                )
            }),
        }
    }

    fn on_disconnected(&mut self, handle: &SessionHandle, reason: &DisconnectReason) {
        if matches!(reason, DisconnectReason::SlowConsumer) {
            self.chat
                .stats
                .slow_consumers
                .fetch_add(1, Ordering::Relaxed);
        }
        let id = handle.id();
        match self.chat.jobs.push(move |rooms| rooms.disconnected(id)) {
            Ok(()) => {}
            // A leave must not be lost: wait for room in a task of its own.
            // Nothing of this session can come after it, so order holds.
            Err(PushError::Full) => {
                let jobs = self.chat.jobs.clone();
                async_std::task::spawn(async move {
                    let _ = jobs.push_wait(move |rooms| rooms.disconnected(id)).await;
                });
            }
            Err(PushError::Closed) => {}
        }
    }
}

struct Member {
    handle: SessionHandle,
    nick: String,
    room: String,
}

#[derive(Default)]
struct Room {
    sessions: Registry,
    /// Members over WebSocket: their frames are made apart.
    websockets: Registry,
    nicks: BTreeSet<String>,
}

/// Every room, nick and member; owned by the chat's job queue.
struct Rooms {
    members: HashMap<SessionId, Member>,
    rooms: HashMap<String, Room>,
    nicks: HashSet<String>,
    /// The framing of the (non-WebSocket) listener's sessions (all share
    /// one).
    framing: Framing,
    stats: Arc<ChatStats>,
}

fn valid_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        Err("is empty".into())
    } else if name.len() > MAX_NAME {
        Err(format!("is longer than {MAX_NAME} bytes"))
    } else if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Err("holds a space or a control character".into())
    } else {
        Ok(())
    }
}

impl Rooms {
    /// Sends `line` to one member only.
    fn tell(&self, id: SessionId, line: &str) {
        if let Some(member) = self.members.get(&id) {
            let _ = member.handle.send_text(line);
        }
    }

    /// Frames `line` once and queues it for everyone in `room` but `except`.
    fn broadcast(&self, room: &str, line: &str, except: Option<SessionId>) {
        let Some(room) = self.rooms.get(room) else {
            return;
        };
        // One frame per kind of member the room has.
        let mut delivered = 0;
        let plain = (!room.sessions.is_empty())
            .then(|| Frame::new(self.framing, line.as_bytes(), MAX_OUT).ok())
            .flatten();
        if let Some(frame) = plain {
            delivered += room.sessions.broadcast(&frame, except).delivered;
        }
        let websocket = (!room.websockets.is_empty())
            .then(|| Frame::websocket(MessageKind::Text, line.as_bytes(), MAX_OUT).ok())
            .flatten();
        if let Some(frame) = websocket {
            delivered += room.websockets.broadcast(&frame, except).delivered;
        }
        self.stats
            .deliveries
            .fetch_add(delivered as u64, Ordering::Relaxed);
    }

    fn connect(&mut self, handle: SessionHandle) {
        if !handle.is_connected() {
            return;
        }
        let id = handle.id();
        if handle.framing() != Framing::WebSocket {
            self.framing = handle.framing();
        }
        let nick = format!("guest-{}", id.get());
        let _ = handle.send_text(&format!(
            "* welcome, you are {nick} in {LOBBY}; commands: {COMMANDS}"
        ));
        self.nicks.insert(nick.clone());
        self.members.insert(
            id,
            Member {
                handle,
                nick,
                room: String::new(),
            },
        );
        self.stats.connected.fetch_add(1, Ordering::Relaxed);
        self.stats.members.fetch_add(1, Ordering::Relaxed);
        self.enter(id, LOBBY.to_owned());
    }

    /// Puts a member (in no room) into `room` and tells the room.
    fn enter(&mut self, id: SessionId, room_name: String) {
        let Some(member) = self.members.get_mut(&id) else {
            return;
        };
        let room = self.rooms.entry(room_name.clone()).or_default();
        if member.handle.framing() == Framing::WebSocket {
            room.websockets.insert(member.handle.clone());
        } else {
            room.sessions.insert(member.handle.clone());
        }
        room.nicks.insert(member.nick.clone());
        member.room = room_name.clone();
        let notice = format!("* {} joined {room_name}", member.nick);
        self.broadcast(&room_name, &notice, None);
    }

    /// Takes a member out of its room and tells those who stay.
    fn exit(&mut self, id: SessionId) {
        let Some(member) = self.members.get_mut(&id) else {
            return;
        };
        let room_name = std::mem::take(&mut member.room);
        let nick = member.nick.clone();
        let Some(room) = self.rooms.get_mut(&room_name) else {
            return;
        };
        room.sessions.remove(id);
        room.websockets.remove(id);
        room.nicks.remove(&nick);
        if room.nicks.is_empty() {
            self.rooms.remove(&room_name);
        } else {
            self.broadcast(&room_name, &format!("* {nick} left {room_name}"), None);
        }
    }

    fn nick(&mut self, id: SessionId, name: String) {
        let Some(member) = self.members.get(&id) else {
            return;
        };
        if let Err(why) = valid_name(&name) {
            return self.tell(id, &format!("! nick {why}"));
        }
        if name == member.nick {
            return self.tell(id, &format!("! you are already {name}"));
        }
        if name.starts_with("guest-") || self.nicks.contains(&name) {
            return self.tell(id, &format!("! nick {name} is taken"));
        }
        let old = member.nick.clone();
        let room_name = member.room.clone();
        self.nicks.remove(&old);
        self.nicks.insert(name.clone());
        if let Some(room) = self.rooms.get_mut(&room_name) {
            room.nicks.remove(&old);
            room.nicks.insert(name.clone());
        }
        if let Some(member) = self.members.get_mut(&id) {
            member.nick = name.clone();
        }
        self.broadcast(&room_name, &format!("* {old} is now {name}"), None);
    }

    fn join(&mut self, id: SessionId, room: String) {
        let Some(member) = self.members.get(&id) else {
            return;
        };
        if let Err(why) = valid_name(&room) {
            return self.tell(id, &format!("! room name {why}"));
        }
        if member.room == room {
            return self.tell(id, &format!("! you are already in {room}"));
        }
        self.exit(id);
        self.enter(id, room);
    }

    fn who(&self, id: SessionId) {
        let Some(member) = self.members.get(&id) else {
            return;
        };
        let Some(room) = self.rooms.get(&member.room) else {
            return;
        };
        let mut line = format!("* in {} ({}):", member.room, room.nicks.len());
        for nick in &room.nicks {
            if line.len() + nick.len() + 1 > WHO_LINE {
                let _ = member.handle.send_text(&line);
                line = format!("* in {} (more):", member.room);
            }
            line.push(' ');
            line.push_str(nick);
        }
        let _ = member.handle.send_text(&line);
    }

    fn say(&self, id: SessionId, text: &str) {
        let Some(member) = self.members.get(&id) else {
            return;
        };
        self.stats.messages.fetch_add(1, Ordering::Relaxed);
        let line = format!("{}: {text}", member.nick);
        self.broadcast(&member.room, &line, Some(id));
    }

    fn quit(&mut self, id: SessionId) {
        if let Some(member) = self.members.get(&id) {
            let _ = member.handle.send_text("* bye");
            member.handle.disconnect();
        }
        self.disconnected(id);
    }

    fn disconnected(&mut self, id: SessionId) {
        if !self.members.contains_key(&id) {
            return;
        }
        self.exit(id);
        if let Some(member) = self.members.remove(&id) {
            self.nicks.remove(&member.nick);
            self.stats.disconnected.fetch_add(1, Ordering::Relaxed);
            self.stats.members.fetch_sub(1, Ordering::Relaxed);
        }
    }
}
