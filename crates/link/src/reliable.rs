//! Reliable message delivery over a byte stream: selective-repeat ARQ on e2t-proto frames.
//!
//! One worker thread owns the transport. It segments outgoing messages into data frames, keeps up to
//! `window` of them in flight, retransmits on timeout (RTO from measured round trips, Karn's rule)
//! and on holes the peer's selective acks reveal, reassembles incoming segments in order, drops
//! duplicates, and sends acks (piggybacked or alone, also as keep-alives).
//!
//! Sessions: the active side (`connect`) opens a session with `Sync`; the passive side (`accept`,
//! the agent) drops all link state on a new session id. A passive side that sees frames of a session
//! it does not know answers `Reset`, so a host talking to a restarted agent learns it at once.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use e2t_proto::MAX_MESSAGE;
use e2t_proto::frame::{
    FLAG_FIN, FLAG_PART, Frame, FrameDecoder, FrameError, FrameKind, MAX_PAYLOAD,
};
use serde::{Deserialize, Serialize};

use crate::transport::Transport;

/// The sack bitmap has 32 bits, so at most 32 + 1 frames can be usefully in flight.
const MAX_WINDOW: u32 = 32;

#[derive(Clone, Debug)]
pub struct LinkConfig {
    /// Largest segment payload (bytes); at most `e2t_proto::MAX_PAYLOAD`.
    pub max_segment: usize,
    /// Smallest segment the adaptive sizing shrinks to on a lossy line.
    pub min_segment: usize,
    /// Data frames in flight (1..=32).
    pub window: u32,
    pub rto_initial: Duration,
    pub rto_min: Duration,
    pub rto_max: Duration,
    /// Send an ack as keep-alive when nothing was sent for this long.
    pub keepalive: Duration,
    /// The peer is declared gone after this long without a valid frame.
    pub peer_timeout: Duration,
    /// `connect` gives up after this long without a `SyncAck`.
    pub connect_timeout: Duration,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            max_segment: 4096,
            min_segment: 64,
            window: 16,
            rto_initial: Duration::from_millis(300),
            rto_min: Duration::from_millis(30),
            rto_max: Duration::from_secs(3),
            keepalive: Duration::from_millis(500),
            peer_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

impl LinkConfig {
    fn validated(mut self) -> Self {
        self.max_segment = self.max_segment.clamp(16, MAX_PAYLOAD);
        self.min_segment = self.min_segment.clamp(16, self.max_segment);
        self.window = self.window.clamp(1, MAX_WINDOW);
        self
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("link {transport}: {source}")]
    Transport {
        transport: String,
        source: io::Error,
    },
    #[error("link {transport}: peer silent for {secs:.1} s (timeout)")]
    PeerSilent { transport: String, secs: f64 },
    #[error("link {transport}: peer restarted (it does not know session {session:#x})")]
    PeerReset { transport: String, session: u32 },
    #[error("link {transport}: no answer to the session handshake within {secs:.1} s")]
    ConnectTimeout { transport: String, secs: f64 },
    #[error("message of {len} bytes exceeds the link maximum of {max}")]
    MessageTooLarge { len: usize, max: usize },
    #[error("link closed")]
    Closed,
}

/// Counters of one link, for the run folder.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LinkStats {
    pub transport: String,
    pub elapsed_s: f64,
    /// Bytes handed to / read from the transport (all frames, all overhead).
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub frames_sent: u64,
    pub frames_received: u64,
    pub data_frames_sent: u64,
    /// Data frames sent again (timeout or hole reported by the peer).
    pub frames_retransmitted: u64,
    pub timeouts: u64,
    pub crc_errors: u64,
    /// COBS errors, short frames, unknown kinds, oversize runs.
    pub framing_errors: u64,
    pub duplicates_dropped: u64,
    /// The most recent malformed-frame error, for the log.
    pub last_frame_error: Option<String>,
    /// Frames of another session (before a resync, or from a restarted peer).
    pub stale_frames: u64,
    pub messages_sent: u64,
    pub messages_received: u64,
    /// Message bytes delivered to / from the application.
    pub payload_bytes_sent: u64,
    pub payload_bytes_received: u64,
    pub sessions: u64,
    /// Current segment size (shrinks on loss).
    pub segment: usize,
    pub srtt_ms: Option<f64>,
    /// Transport line rate in bytes/s, when known (serial or emulated).
    pub line_rate: Option<u64>,
}

impl LinkStats {
    /// Add the counts of another link (e.g. the one before a reconnect).
    pub fn absorb(&mut self, o: &LinkStats) {
        self.elapsed_s += o.elapsed_s;
        self.bytes_sent += o.bytes_sent;
        self.bytes_received += o.bytes_received;
        self.frames_sent += o.frames_sent;
        self.frames_received += o.frames_received;
        self.data_frames_sent += o.data_frames_sent;
        self.frames_retransmitted += o.frames_retransmitted;
        self.timeouts += o.timeouts;
        self.crc_errors += o.crc_errors;
        self.framing_errors += o.framing_errors;
        self.duplicates_dropped += o.duplicates_dropped;
        self.stale_frames += o.stale_frames;
        self.messages_sent += o.messages_sent;
        self.messages_received += o.messages_received;
        self.payload_bytes_sent += o.payload_bytes_sent;
        self.payload_bytes_received += o.payload_bytes_received;
        self.sessions += o.sessions;
        if self.transport.is_empty() {
            self.transport = o.transport.clone();
            self.line_rate = o.line_rate;
        }
    }

    /// Application bytes sent per byte on the wire (1.0 = no overhead).
    pub fn efficiency(&self) -> f64 {
        if self.bytes_sent == 0 {
            0.0
        } else {
            self.payload_bytes_sent as f64 / self.bytes_sent as f64
        }
    }
    /// Application bytes per second, sent and received together.
    pub fn goodput(&self) -> f64 {
        if self.elapsed_s <= 0.0 {
            0.0
        } else {
            (self.payload_bytes_sent + self.payload_bytes_received) as f64 / self.elapsed_s
        }
    }
    /// Goodput of the sending direction as a fraction of the line rate.
    pub fn line_utilisation(&self) -> Option<f64> {
        let r = self.line_rate? as f64;
        if self.elapsed_s <= 0.0 {
            None
        } else {
            Some(self.bytes_sent as f64 / self.elapsed_s / r)
        }
    }
}

/// One message as delivered, with the session it arrived in.
#[derive(Debug)]
pub struct Received {
    pub session: u32,
    pub bytes: Vec<u8>,
}

enum Cmd {
    Send {
        session: Option<u32>,
        bytes: Vec<u8>,
    },
}

/// A reliable message link. Dropping it stops the worker thread and closes the transport.
pub struct Link {
    cmd: Option<Sender<Cmd>>,
    events: Receiver<Result<Received, LinkError>>,
    stats: Arc<Mutex<LinkStats>>,
    session: Arc<Mutex<Option<u32>>>,
    worker: Option<JoinHandle<()>>,
    name: String,
    dead: bool,
    active: bool,
}

impl Link {
    /// Open a session as the active side (the host) and wait for the peer's answer.
    pub fn connect(transport: Box<dyn Transport>, cfg: LinkConfig) -> Result<Link, LinkError> {
        let name = transport.describe();
        let connect_timeout = cfg.connect_timeout;
        let session = fresh_session_id();
        let link = Link::start(transport, cfg, Some(session));
        let deadline = Instant::now() + connect_timeout;
        loop {
            if *link.session.lock().unwrap_or_else(|e| e.into_inner()) == Some(session) {
                return Ok(link);
            }
            match link.events.recv_timeout(Duration::from_millis(2)) {
                Ok(Err(e)) => return Err(e),
                Ok(Ok(_)) => {} // cannot happen before the session is open
                Err(RecvTimeoutError::Disconnected) => return Err(LinkError::Closed),
                Err(RecvTimeoutError::Timeout) => {}
            }
            if Instant::now() > deadline {
                return Err(LinkError::ConnectTimeout {
                    transport: name,
                    secs: connect_timeout.as_secs_f64(),
                });
            }
        }
    }

    /// Serve as the passive side (the agent): sessions are opened by the peer.
    pub fn accept(transport: Box<dyn Transport>, cfg: LinkConfig) -> Link {
        Link::start(transport, cfg, None)
    }

    fn start(transport: Box<dyn Transport>, cfg: LinkConfig, active: Option<u32>) -> Link {
        let cfg = cfg.validated();
        let (cmd_tx, cmd_rx) = mpsc::channel();
        let (ev_tx, ev_rx) = mpsc::channel();
        let name = transport.describe();
        let stats = Arc::new(Mutex::new(LinkStats {
            transport: name.clone(),
            line_rate: transport.line_rate(),
            segment: cfg.max_segment,
            ..Default::default()
        }));
        let session = Arc::new(Mutex::new(None));
        let mut w = Worker::new(
            transport,
            cfg,
            active,
            cmd_rx,
            ev_tx,
            stats.clone(),
            session.clone(),
        );
        let worker = std::thread::Builder::new()
            .name("e2t-link".into())
            .spawn(move || w.run())
            .expect("spawning the link worker thread");
        Link {
            cmd: Some(cmd_tx),
            events: ev_rx,
            stats,
            session,
            worker: Some(worker),
            name,
            dead: false,
            active: active.is_some(),
        }
    }

    /// Queue a message in the current session.
    pub fn send(&self, bytes: Vec<u8>) -> Result<(), LinkError> {
        self.send_in(None, bytes)
    }

    /// Queue a reply that only goes out if `session` is still the current one (the agent's answer to
    /// a host that has since reconnected must not leak into the new session).
    pub fn reply(&self, session: u32, bytes: Vec<u8>) -> Result<(), LinkError> {
        self.send_in(Some(session), bytes)
    }

    fn send_in(&self, session: Option<u32>, bytes: Vec<u8>) -> Result<(), LinkError> {
        if bytes.len() > MAX_MESSAGE {
            return Err(LinkError::MessageTooLarge {
                len: bytes.len(),
                max: MAX_MESSAGE,
            });
        }
        let cmd = self.cmd.as_ref().ok_or(LinkError::Closed)?;
        cmd.send(Cmd::Send { session, bytes })
            .map_err(|_| LinkError::Closed)
    }

    /// Next message, waiting at most `timeout`; `Ok(None)` on timeout. After an error other than
    /// `PeerSilent` on a passive link, the link is dead and returns `Closed`.
    pub fn recv(&mut self, timeout: Duration) -> Result<Option<Received>, LinkError> {
        if self.dead {
            return Err(LinkError::Closed);
        }
        match self.events.recv_timeout(timeout) {
            Ok(Ok(r)) => Ok(Some(r)),
            Ok(Err(e)) => {
                if !matches!(e, LinkError::PeerSilent { .. }) || self.active {
                    self.dead = true;
                }
                Err(e)
            }
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => {
                self.dead = true;
                Err(LinkError::Closed)
            }
        }
    }

    pub fn stats(&self) -> LinkStats {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A handle on the live counters that outlives borrows of the link (updated by the worker).
    pub fn stats_handle(&self) -> Arc<Mutex<LinkStats>> {
        self.stats.clone()
    }

    pub fn session(&self) -> Option<u32> {
        *self.session.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn describe(&self) -> &str {
        &self.name
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.cmd = None;
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

fn fresh_session_id() -> u32 {
    // Uniqueness across reconnects is all that matters (no effect on results): mix the clock, the
    // process id and a counter.
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(1);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let c = COUNTER.fetch_add(1, Ordering::Relaxed);
    let id = nanos ^ std::process::id().rotate_left(16) ^ c.wrapping_mul(0x9e37_79b9);
    if id == 0 { 1 } else { id }
}

struct Seg {
    flags: u8,
    payload: Vec<u8>,
    last_sent: Instant,
    first_sent: Instant,
    retx: u32,
    sacked: bool,
}

struct Partial {
    data: Vec<u8>,
    have: Vec<bool>,
    filled: usize,
}

struct Worker {
    t: Box<dyn Transport>,
    cfg: LinkConfig,
    active: bool,
    cmd_rx: Receiver<Cmd>,
    ev_tx: Sender<Result<Received, LinkError>>,
    shared_stats: Arc<Mutex<LinkStats>>,
    shared_session: Arc<Mutex<Option<u32>>>,
    stats: LinkStats,
    started: Instant,
    /// Active side: the session we open. Passive: the session the peer opened.
    session: Option<u32>,
    synced: bool,
    // sender
    outq: VecDeque<(Option<u32>, Vec<u8>, usize)>,
    next_seq: u64,
    base: u64,
    inflight: BTreeMap<u64, Seg>,
    segment: usize,
    clean_acks: u32,
    srtt: Option<f64>,
    rttvar: f64,
    // receiver
    expected: u64,
    ooo: BTreeMap<u64, (u8, Vec<u8>)>,
    parts: BTreeMap<u64, Partial>,
    assembling: Vec<u8>,
    oversize: bool,
    ack_pending: bool,
    // wire
    wbuf: Vec<u8>,
    wpos: usize,
    dec: FrameDecoder,
    last_heard: Instant,
    last_sent: Instant,
    last_sync: Option<Instant>,
    last_reset_sent: Option<Instant>,
    silence_reported: bool,
}

impl Worker {
    fn new(
        t: Box<dyn Transport>,
        cfg: LinkConfig,
        active: Option<u32>,
        cmd_rx: Receiver<Cmd>,
        ev_tx: Sender<Result<Received, LinkError>>,
        shared_stats: Arc<Mutex<LinkStats>>,
        shared_session: Arc<Mutex<Option<u32>>>,
    ) -> Worker {
        let now = Instant::now();
        let stats = shared_stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        Worker {
            t,
            segment: cfg.max_segment,
            cfg,
            active: active.is_some(),
            cmd_rx,
            ev_tx,
            shared_stats,
            shared_session,
            stats,
            started: now,
            session: active,
            synced: false,
            outq: VecDeque::new(),
            next_seq: 0,
            base: 0,
            inflight: BTreeMap::new(),
            clean_acks: 0,
            srtt: None,
            rttvar: 0.0,
            expected: 0,
            ooo: BTreeMap::new(),
            parts: BTreeMap::new(),
            assembling: Vec::new(),
            oversize: false,
            ack_pending: false,
            wbuf: Vec::new(),
            wpos: 0,
            dec: FrameDecoder::new(),
            last_heard: now,
            last_sent: now,
            last_sync: None,
            last_reset_sent: None,
            silence_reported: false,
        }
    }

    fn rto(&self) -> Duration {
        let r = match self.srtt {
            Some(s) => Duration::from_secs_f64(s + 4.0 * self.rttvar),
            None => self.cfg.rto_initial,
        };
        // On a slow line a frame may wait behind up to two others before it leaves: allow for that.
        let queueing = match self.stats.line_rate {
            Some(rate) if rate > 0 => {
                Duration::from_secs_f64(3.0 * (self.segment + 64) as f64 / rate as f64)
            }
            _ => Duration::ZERO,
        };
        (r + queueing).clamp(self.cfg.rto_min, self.cfg.rto_max.max(queueing * 2))
    }

    fn fail(&mut self, e: LinkError) {
        let _ = self.ev_tx.send(Err(e));
    }

    fn io_err(&self, source: io::Error) -> LinkError {
        LinkError::Transport {
            transport: self.stats.transport.clone(),
            source,
        }
    }

    fn run(&mut self) {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // Commands from the application.
            loop {
                match self.cmd_rx.try_recv() {
                    Ok(Cmd::Send { session, bytes }) => self.outq.push_back((session, bytes, 0)),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        self.publish();
                        return;
                    }
                }
            }
            let now = Instant::now();
            if let Err(e) = self.drive_output(now) {
                let e = self.io_err(e);
                self.fail(e);
                break;
            }
            // Silence.
            let silent = now.duration_since(self.last_heard);
            if silent > self.cfg.peer_timeout && (self.synced || self.active) {
                let e = LinkError::PeerSilent {
                    transport: self.stats.transport.clone(),
                    secs: silent.as_secs_f64(),
                };
                if self.active {
                    self.fail(e);
                    break;
                } else if !self.silence_reported {
                    // The agent keeps serving: the host may come back with a new session.
                    self.silence_reported = true;
                    self.fail(e);
                }
            }
            // Input. Wait briefly so new commands and timers are handled promptly.
            let wait = if self.wpos < self.wbuf.len() {
                Duration::ZERO
            } else {
                Duration::from_millis(1)
            };
            match self.t.read(&mut buf, wait) {
                Ok(0) => {}
                Ok(n) => {
                    self.stats.bytes_received += n as u64;
                    let mut frames = Vec::new();
                    self.dec.feed(&buf[..n], |r| frames.push(r));
                    for f in frames {
                        match f {
                            Ok(f) => {
                                if let Err(e) = self.on_frame(f) {
                                    self.fail(e);
                                    self.publish();
                                    return;
                                }
                            }
                            Err(e @ FrameError::Crc { .. }) => {
                                self.stats.crc_errors += 1;
                                self.stats.last_frame_error = Some(e.to_string());
                                // Prompt the peer with our state: its next ack-driven retransmit is sooner.
                                self.ack_pending = self.synced;
                            }
                            Err(e) => {
                                self.stats.framing_errors += 1;
                                self.stats.last_frame_error = Some(e.to_string());
                                self.ack_pending = self.synced;
                            }
                        }
                    }
                }
                Err(e) => {
                    let e = self.io_err(e);
                    self.fail(e);
                    break;
                }
            }
            self.publish();
        }
        self.publish();
    }

    fn publish(&mut self) {
        self.stats.elapsed_s = self.started.elapsed().as_secs_f64();
        self.stats.segment = self.segment;
        self.stats.srtt_ms = self.srtt.map(|s| s * 1e3);
        *self.shared_stats.lock().unwrap_or_else(|e| e.into_inner()) = self.stats.clone();
    }

    fn queue_frame(&mut self, f: &Frame) {
        let w = f.encode();
        self.stats.frames_sent += 1;
        if self.wpos == self.wbuf.len() {
            self.wbuf.clear();
            self.wpos = 0;
        }
        self.wbuf.extend_from_slice(&w);
        self.last_sent = Instant::now();
    }

    fn sack_bits(&self) -> u32 {
        let mut bits = 0u32;
        for (&s, _) in self.ooo.range(self.expected + 1..self.expected + 33) {
            bits |= 1 << (s - self.expected - 1);
        }
        bits
    }

    fn data_frame(&self, seq: u64, seg: &Seg) -> Frame {
        Frame {
            kind: FrameKind::Data,
            flags: seg.flags,
            session: self.session.unwrap_or(0),
            seq: seq as u32,
            ack: self.expected as u32,
            sack: self.sack_bits(),
            payload: seg.payload.clone(),
        }
    }

    /// Room in the write buffer: new frames are queued only when the previous ones are mostly out,
    /// so timers start close to the moment a frame really leaves.
    fn write_room(&self) -> bool {
        self.wbuf.len() - self.wpos < 2 * (self.segment + 64)
    }

    fn drive_output(&mut self, now: Instant) -> io::Result<()> {
        if self.active && !self.synced {
            let due = self
                .last_sync
                .is_none_or(|t| now.duration_since(t) >= self.rto());
            if due {
                let s = self.session.unwrap_or(0);
                self.queue_frame(&Frame::control(FrameKind::Sync, s, 0, 0));
                self.last_sync = Some(now);
            }
        }
        if self.synced {
            self.retransmit_due(now);
            self.fill_window(now);
            if self.ack_pending || now.duration_since(self.last_sent) >= self.cfg.keepalive {
                let f = Frame::control(
                    FrameKind::Ack,
                    self.session.unwrap_or(0),
                    self.expected as u32,
                    self.sack_bits(),
                );
                self.queue_frame(&f);
                self.ack_pending = false;
            }
        }
        while self.wpos < self.wbuf.len() {
            let n = self.t.write(&self.wbuf[self.wpos..], Duration::ZERO)?;
            if n == 0 {
                break;
            }
            self.wpos += n;
            self.stats.bytes_sent += n as u64;
        }
        Ok(())
    }

    fn retransmit_due(&mut self, now: Instant) {
        let rto = self.rto();
        let mut due = Vec::new();
        for (&s, seg) in &self.inflight {
            if seg.sacked {
                continue;
            }
            let backoff = rto
                .saturating_mul(1 << seg.retx.min(4))
                .min(self.cfg.rto_max);
            if now.duration_since(seg.last_sent) >= backoff {
                due.push(s);
            }
        }
        if !due.is_empty() {
            self.stats.timeouts += 1;
            self.clean_acks = 0;
            // Loss: smaller frames survive a noisy line better (only new segments are resized).
            self.segment = (self.segment / 2).max(self.cfg.min_segment);
        }
        for s in due {
            if !self.write_room() {
                break;
            }
            self.resend(s, now);
        }
    }

    fn resend(&mut self, s: u64, now: Instant) {
        let (flags, payload) = match self.inflight.get_mut(&s) {
            Some(seg) => {
                seg.retx += 1;
                seg.last_sent = now;
                (seg.flags, seg.payload.clone())
            }
            None => return,
        };
        let session = self.session.unwrap_or(0);
        self.stats.frames_retransmitted += 1;
        if payload.len() <= self.segment {
            let f = Frame {
                kind: FrameKind::Data,
                flags,
                session,
                seq: s as u32,
                ack: self.expected as u32,
                sack: self.sack_bits(),
                payload,
            };
            self.stats.data_frames_sent += 1;
            self.queue_frame(&f);
        } else {
            // The line got worse since this segment was cut: resend it as smaller pieces, which the
            // receiver collects across retransmissions until the segment is whole.
            let total = payload.len() as u32;
            for (i, piece) in payload.chunks(self.segment).enumerate() {
                let off = (i * self.segment) as u32;
                let f = Frame {
                    kind: FrameKind::Data,
                    flags: flags | FLAG_PART,
                    session,
                    seq: s as u32,
                    ack: self.expected as u32,
                    sack: off << 16 | total,
                    payload: piece.to_vec(),
                };
                self.stats.data_frames_sent += 1;
                self.queue_frame(&f);
            }
        }
        self.ack_pending = false;
    }

    fn fill_window(&mut self, now: Instant) {
        while self.next_seq - self.base < u64::from(self.cfg.window) && self.write_room() {
            let cur = self.session;
            // Drop replies addressed to a session that is no longer current.
            while let Some((s, _, _)) = self.outq.front() {
                if s.is_some() && *s != cur {
                    self.outq.pop_front();
                } else {
                    break;
                }
            }
            let Some((_, msg, off)) = self.outq.front_mut() else {
                break;
            };
            let end = (*off + self.segment).min(msg.len());
            let payload = msg[*off..end].to_vec();
            *off = end;
            let fin = end == msg.len();
            if fin {
                let (_, m, _) = self.outq.pop_front().expect("front exists");
                self.stats.messages_sent += 1;
                self.stats.payload_bytes_sent += m.len() as u64;
            }
            let seg = Seg {
                flags: if fin { FLAG_FIN } else { 0 },
                payload,
                last_sent: now,
                first_sent: now,
                retx: 0,
                sacked: false,
            };
            let seq = self.next_seq;
            self.next_seq += 1;
            let f = self.data_frame(seq, &seg);
            self.inflight.insert(seq, seg);
            self.stats.data_frames_sent += 1;
            self.queue_frame(&f);
            self.ack_pending = false;
        }
    }

    fn reset_session(&mut self, session: u32) {
        self.session = Some(session);
        self.synced = true;
        self.next_seq = 0;
        self.base = 0;
        self.inflight.clear();
        self.expected = 0;
        self.ooo.clear();
        self.parts.clear();
        self.assembling.clear();
        self.oversize = false;
        self.segment = self.cfg.max_segment;
        self.clean_acks = 0;
        self.silence_reported = false;
        // Whatever was queued belonged to the old session (replies are tagged and dropped later;
        // untagged sends by a passive side make no sense across sessions either).
        self.outq.clear();
        self.stats.sessions += 1;
        *self
            .shared_session
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(session);
    }

    fn on_frame(&mut self, f: Frame) -> Result<(), LinkError> {
        self.stats.frames_received += 1;
        let now = Instant::now();
        match f.kind {
            FrameKind::Sync => {
                if self.active {
                    self.stats.stale_frames += 1;
                    return Ok(());
                }
                if self.session != Some(f.session) || !self.synced {
                    self.reset_session(f.session);
                }
                self.last_heard = now;
                self.queue_frame(&Frame::control(FrameKind::SyncAck, f.session, 0, 0));
                return Ok(());
            }
            FrameKind::SyncAck => {
                if self.active && self.session == Some(f.session) {
                    self.last_heard = now;
                    if !self.synced {
                        self.synced = true;
                        self.stats.sessions += 1;
                        *self
                            .shared_session
                            .lock()
                            .unwrap_or_else(|e| e.into_inner()) = self.session;
                    }
                } else {
                    self.stats.stale_frames += 1;
                }
                return Ok(());
            }
            FrameKind::Reset => {
                if self.active && self.session == Some(f.session) {
                    return Err(LinkError::PeerReset {
                        transport: self.stats.transport.clone(),
                        session: f.session,
                    });
                }
                self.stats.stale_frames += 1;
                return Ok(());
            }
            FrameKind::Data | FrameKind::Ack => {}
        }
        if !self.synced || self.session != Some(f.session) {
            self.stats.stale_frames += 1;
            if !self.active
                && self
                    .last_reset_sent
                    .is_none_or(|t| now.duration_since(t) >= self.cfg.rto_min)
            {
                self.queue_frame(&Frame::control(FrameKind::Reset, f.session, 0, 0));
                self.last_reset_sent = Some(now);
            }
            return Ok(());
        }
        self.last_heard = now;
        self.silence_reported = false;
        let sack = if f.flags & FLAG_PART != 0 { 0 } else { f.sack };
        self.on_ack(f.ack, sack, now);
        if f.kind == FrameKind::Data {
            self.on_data(f);
        }
        Ok(())
    }

    fn rtt_sample(&mut self, seg: &Seg, now: Instant) {
        if seg.retx > 0 {
            return; // Karn: an ack for a retransmitted frame says nothing about the round trip.
        }
        let r = now.duration_since(seg.first_sent).as_secs_f64();
        match self.srtt {
            None => {
                self.srtt = Some(r);
                self.rttvar = r / 2.0;
            }
            Some(s) => {
                self.rttvar = 0.75 * self.rttvar + 0.25 * (s - r).abs();
                self.srtt = Some(0.875 * s + 0.125 * r);
            }
        }
        self.clean_acks += 1;
        if self.clean_acks >= 8 {
            self.clean_acks = 0;
            self.segment = (self.segment * 2).min(self.cfg.max_segment);
        }
    }

    fn on_ack(&mut self, ack: u32, sack: u32, now: Instant) {
        let d = u64::from(ack.wrapping_sub(self.base as u32));
        if d <= self.next_seq - self.base {
            let new_base = self.base + d;
            while let Some((&s, _)) = self.inflight.first_key_value() {
                if s >= new_base {
                    break;
                }
                let seg = self.inflight.remove(&s).expect("key exists");
                if !seg.sacked {
                    self.rtt_sample(&seg, now);
                }
            }
            self.base = new_base;
        }
        if sack == 0 {
            return;
        }
        let mut highest = None;
        for i in 0..32u64 {
            if sack & (1 << i) != 0 {
                let s = self.base + 1 + i;
                let copy = match self.inflight.get_mut(&s) {
                    Some(seg) if !seg.sacked => {
                        seg.sacked = true;
                        Some(Seg {
                            payload: Vec::new(),
                            ..*seg
                        })
                    }
                    _ => None,
                };
                if let Some(c) = copy {
                    self.rtt_sample(&c, now);
                }
                highest = Some(s);
            }
        }
        // Fast retransmit: frames below the highest one the peer holds are missing, unless we just
        // sent them (within one smoothed round trip).
        if let Some(h) = highest {
            let guard = Duration::from_secs_f64(self.srtt.unwrap_or(self.rto().as_secs_f64()));
            let holes: Vec<u64> = self
                .inflight
                .range(self.base..h)
                .filter(|(_, seg)| !seg.sacked && now.duration_since(seg.last_sent) > guard)
                .map(|(&s, _)| s)
                .collect();
            for s in holes {
                if !self.write_room() {
                    break;
                }
                self.resend(s, now);
            }
        }
    }

    fn on_data(&mut self, f: Frame) {
        self.ack_pending = true;
        let d = u64::from(f.seq.wrapping_sub(self.expected as u32));
        if d > u64::from(MAX_WINDOW) {
            // Behind the window: an old duplicate (our ack was lost). Ack again, deliver nothing.
            self.stats.duplicates_dropped += 1;
            return;
        }
        let seq = self.expected + d;
        let mut f = f;
        if f.flags & FLAG_PART != 0 {
            match self.collect_part(seq, &f) {
                Some(whole) => {
                    f.payload = whole;
                    f.flags &= !FLAG_PART;
                }
                None => return,
            }
        }
        if d > 0 {
            if self.ooo.insert(seq, (f.flags, f.payload)).is_some() {
                self.stats.duplicates_dropped += 1;
            }
            return;
        }
        self.accept_segment(f.flags, f.payload);
        self.expected += 1;
        while let Some((flags, payload)) = self.ooo.remove(&self.expected) {
            self.accept_segment(flags, payload);
            self.expected += 1;
        }
        // Pieces of segments now delivered are no longer needed.
        self.parts = self.parts.split_off(&self.expected);
    }

    /// Add one piece of segment `seq`; returns the whole segment once every byte has arrived.
    fn collect_part(&mut self, seq: u64, f: &Frame) -> Option<Vec<u8>> {
        if self.ooo.contains_key(&seq) {
            self.stats.duplicates_dropped += 1;
            return None;
        }
        let off = (f.sack >> 16) as usize;
        let total = (f.sack & 0xffff) as usize;
        if total > MAX_PAYLOAD || off + f.payload.len() > total {
            self.stats.framing_errors += 1;
            return None;
        }
        let p = self.parts.entry(seq).or_insert_with(|| Partial {
            data: vec![0; total],
            have: vec![false; total],
            filled: 0,
        });
        if p.data.len() != total {
            self.stats.framing_errors += 1;
            return None;
        }
        for (i, &b) in f.payload.iter().enumerate() {
            if !p.have[off + i] {
                p.have[off + i] = true;
                p.data[off + i] = b;
                p.filled += 1;
            }
        }
        if p.filled == total {
            self.parts.remove(&seq).map(|p| p.data)
        } else {
            None
        }
    }

    fn accept_segment(&mut self, flags: u8, payload: Vec<u8>) {
        if !self.oversize {
            if self.assembling.len() + payload.len() > MAX_MESSAGE {
                // A peer bug, not line noise (the CRC passed): drop the message, keep the link.
                self.oversize = true;
                self.stats.framing_errors += 1;
                self.assembling.clear();
            } else {
                self.assembling.extend_from_slice(&payload);
            }
        }
        if flags & FLAG_FIN != 0 {
            if !self.oversize {
                let bytes = std::mem::take(&mut self.assembling);
                self.stats.messages_received += 1;
                self.stats.payload_bytes_received += bytes.len() as u64;
                // Counters first, so an application that just got the message sees them updated.
                self.publish();
                let _ = self.ev_tx.send(Ok(Received {
                    session: self.session.unwrap_or(0),
                    bytes,
                }));
            }
            self.oversize = false;
        }
    }
}
