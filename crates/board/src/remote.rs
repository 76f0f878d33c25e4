//! Host side: a [`StepEngine`] that runs on a board agent behind a link.
//!
//! Recovery invariant: the host keeps the last checkpoint it fetched (none = the freshly configured
//! engine) and every step and skip since. When the link fails (agent reset, cable pulled, agent
//! process killed) it reconnects through the transport factory, configures, re-uploads that
//! checkpoint, replays the logged operations and then retries the failed request. Engines are
//! deterministic, so the final state equals that of an uninterrupted run.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use e2t_core::{Batch, Counters, EngineConfig, EngineError, EvalResult, StepEngine, StepResult};
use e2t_link::{
    FaultConfig, Faulty, Link, LinkConfig, LinkError, LinkStats, PtyChild, Throttled, Transport,
};
use e2t_proto::msg::CHUNK;
use e2t_proto::{
    BoardInfo, ErrorCode, Hello, MAGIC, Msg, PROTOCOL_VERSION, ProtoError, decode_msg, encode_msg,
};

use crate::agent::serve;
use crate::power::NoPower;

/// Where the board is: `sim`, `pty` or `serial:PATH[@BAUD]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BoardSpec {
    /// Agent in a thread of this process, over an in-process pipe (same protocol code).
    Sim,
    /// Agent as a separate process on a fresh pseudo-terminal.
    Pty,
    Serial {
        path: PathBuf,
        baud: u32,
    },
}

pub const DEFAULT_BAUD: u32 = 921_600;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("bad board '{spec}': {why} (expected sim, pty or serial:/dev/ttyUSB1@921600)")]
pub struct BoardSpecError {
    pub spec: String,
    pub why: String,
}

impl FromStr for BoardSpec {
    type Err = BoardSpecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| BoardSpecError {
            spec: s.to_string(),
            why: why.to_string(),
        };
        match s.trim() {
            "sim" => return Ok(BoardSpec::Sim),
            "pty" => return Ok(BoardSpec::Pty),
            _ => {}
        }
        let rest = s
            .trim()
            .strip_prefix("serial:")
            .ok_or_else(|| bad("unknown kind"))?;
        let (path, baud) = match rest.rsplit_once('@') {
            Some((p, b)) => {
                let baud: u32 = b
                    .parse()
                    .map_err(|_| bad(&format!("baud rate '{b}' is not a positive integer")))?;
                if baud == 0 {
                    return Err(bad("baud rate must be positive"));
                }
                (p, baud)
            }
            None => (rest, DEFAULT_BAUD),
        };
        if path.is_empty() {
            return Err(bad("missing device path after 'serial:'"));
        }
        Ok(BoardSpec::Serial {
            path: PathBuf::from(path),
            baud,
        })
    }
}

impl fmt::Display for BoardSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BoardSpec::Sim => write!(f, "sim"),
            BoardSpec::Pty => write!(f, "pty"),
            BoardSpec::Serial { path, baud } => write!(f, "serial:{}@{baud}", path.display()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("board protocol: {0}")]
    Proto(#[from] ProtoError),
    #[error(
        "board {board} speaks protocol version {board_version} (magic {magic:#x}); this host speaks {PROTOCOL_VERSION}"
    )]
    Version {
        board: String,
        board_version: u16,
        magic: u32,
    },
    #[error(
        "board {board} runs bitstream '{bitstream}' with sha256 {got}, but {expected} was expected"
    )]
    Bitstream {
        board: String,
        bitstream: String,
        got: String,
        expected: String,
    },
    #[error("board agent error ({code:?}): {text}")]
    Agent { code: ErrorCode, text: String },
    #[error("board answered {got} to {request}")]
    Unexpected {
        request: &'static str,
        got: &'static str,
    },
    #[error("board answered nothing to {request} within {secs:.0} s")]
    NoAnswer { request: &'static str, secs: f64 },
    #[error("cannot open the board transport: {0}")]
    Open(String),
    #[error("board unreachable after {attempts} reconnect attempts; last error: {last}")]
    Unreachable { attempts: u32, last: String },
}

impl RemoteError {
    /// Worth a reconnect: the line or the agent failed, not the request.
    fn is_link(&self) -> bool {
        matches!(
            self,
            RemoteError::Link(_) | RemoteError::NoAnswer { .. } | RemoteError::Open(_)
        )
    }
    fn into_engine(self) -> EngineError {
        match self {
            RemoteError::Agent {
                code: ErrorCode::Config,
                text,
            } => EngineError::Config(text),
            RemoteError::Agent {
                code: ErrorCode::Batch,
                text,
            } => EngineError::Batch {
                seq: u64::MAX,
                reason: text,
            },
            RemoteError::Agent {
                code: ErrorCode::Checkpoint,
                text,
            } => EngineError::Checkpoint(text),
            other => EngineError::Accelerator(other.to_string()),
        }
    }
}

/// Opens a fresh transport to the board; called once per (re)connection with the attempt number.
pub type TransportFactory = Box<dyn FnMut(u32) -> Result<Box<dyn Transport>, RemoteError> + Send>;

#[derive(Clone, Debug)]
pub struct RemoteOptions {
    pub link: LinkConfig,
    /// Refuse a board whose bitstream hash differs (hex, case-insensitive).
    pub expected_bitstream_sha256: Option<String>,
    /// Fetch a checkpoint to the host every this many steps (0: never; recovery replays from the start).
    pub checkpoint_every: u64,
    pub max_reconnects: u32,
    /// Longest wait for one answer (a step on a large model can take a while; a dead peer is caught
    /// sooner by the link's silence timeout).
    pub request_timeout: Duration,
    /// Evaluation requests carry at most this many image bytes each.
    pub eval_chunk_bytes: usize,
}

impl Default for RemoteOptions {
    fn default() -> Self {
        RemoteOptions {
            link: LinkConfig::default(),
            expected_bitstream_sha256: None,
            checkpoint_every: 100,
            max_reconnects: 5,
            request_timeout: Duration::from_secs(600),
            eval_chunk_bytes: 1 << 20,
        }
    }
}

enum Op {
    Step(Batch),
    Skip(f32),
    CalibrateBn(Vec<u8>, u32),
}

struct Inner {
    factory: TransportFactory,
    opts: RemoteOptions,
    config: EngineConfig,
    link: Option<Link>,
    base: Option<Vec<u8>>,
    log: Vec<Op>,
    last_counters: Counters,
    tel: Arc<Mutex<Telemetry>>,
}

/// What a run folder wants to know about the link, readable while a request is in progress.
#[derive(Default)]
struct Telemetry {
    closed: LinkStats,
    current: Option<Arc<Mutex<LinkStats>>>,
    reconnects: u32,
    info: Option<BoardInfo>,
}

/// A cloneable view of a [`RemoteEngine`]'s link statistics; keep it after boxing the engine as a
/// `dyn StepEngine`.
#[derive(Clone)]
pub struct RemoteMonitor {
    tel: Arc<Mutex<Telemetry>>,
}

impl RemoteMonitor {
    fn get(&self) -> std::sync::MutexGuard<'_, Telemetry> {
        self.tel.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Link counters summed over all connections of the engine.
    pub fn link_stats(&self) -> LinkStats {
        let t = self.get();
        let mut s = t.closed.clone();
        if let Some(h) = &t.current {
            let cur = h.lock().unwrap_or_else(|e| e.into_inner()).clone();
            s.absorb(&cur);
            s.transport = cur.transport.clone();
            s.line_rate = cur.line_rate;
            s.segment = cur.segment;
            s.srtt_ms = cur.srtt_ms;
            s.last_frame_error = cur.last_frame_error.clone().or(s.last_frame_error);
        }
        s
    }

    /// How many times the link was re-established.
    pub fn reconnects(&self) -> u32 {
        self.get().reconnects
    }

    /// What the board said about itself at the last handshake.
    pub fn board_info(&self) -> Option<BoardInfo> {
        self.get().info.clone()
    }
}

/// A [`StepEngine`] whose engine runs on a board agent.
pub struct RemoteEngine {
    config: EngineConfig,
    inner: Mutex<Inner>,
}

impl RemoteEngine {
    /// Connect, check the board and configure its engine.
    pub fn new(
        factory: TransportFactory,
        opts: RemoteOptions,
        config: EngineConfig,
    ) -> Result<Self, RemoteError> {
        let mut inner = Inner {
            factory,
            opts,
            config: config.clone(),
            link: None,
            base: None,
            log: Vec::new(),
            last_counters: Counters::default(),
            tel: Arc::new(Mutex::new(Telemetry::default())),
        };
        inner.open(1)?;
        Ok(RemoteEngine {
            config,
            inner: Mutex::new(inner),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A view of the link statistics that stays usable after boxing the engine.
    pub fn monitor(&self) -> RemoteMonitor {
        RemoteMonitor {
            tel: self.lock().tel.clone(),
        }
    }

    /// What the board said about itself at the last handshake.
    pub fn board_info(&self) -> Option<BoardInfo> {
        self.monitor().board_info()
    }

    /// Link counters summed over all connections of this engine.
    pub fn link_stats(&self) -> LinkStats {
        self.monitor().link_stats()
    }

    /// How many times the link was re-established.
    pub fn reconnects(&self) -> u32 {
        self.monitor().reconnects()
    }
}

impl Inner {
    fn tel(&self) -> std::sync::MutexGuard<'_, Telemetry> {
        self.tel.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn close_link(&mut self) {
        if let Some(l) = self.link.take() {
            let s = l.stats();
            let mut t = self.tel();
            t.closed.absorb(&s);
            t.closed.last_frame_error = s.last_frame_error.or(t.closed.last_frame_error.take());
            t.current = None;
        }
    }

    /// Connect, handshake and configure (no state upload).
    fn open(&mut self, attempt: u32) -> Result<(), RemoteError> {
        self.close_link();
        let t = (self.factory)(attempt)?;
        let link = Link::connect(t, self.opts.link.clone())?;
        self.tel().current = Some(link.stats_handle());
        self.link = Some(link);
        let info = match self.call(Msg::Hello(Hello::new("e2train host")))? {
            Msg::HelloAck(i) => i,
            other => {
                return Err(RemoteError::Unexpected {
                    request: "Hello",
                    got: other.name(),
                });
            }
        };
        if info.magic != MAGIC || info.protocol_version != PROTOCOL_VERSION {
            return Err(RemoteError::Version {
                board: info.board_id,
                board_version: info.protocol_version,
                magic: info.magic,
            });
        }
        if let Some(want) = &self.opts.expected_bitstream_sha256 {
            let got = info
                .bitstream_sha256
                .clone()
                .unwrap_or_else(|| "none".into());
            if !got.eq_ignore_ascii_case(want) {
                return Err(RemoteError::Bitstream {
                    board: info.board_id,
                    bitstream: info.bitstream_id,
                    got,
                    expected: want.clone(),
                });
            }
        }
        self.tel().info = Some(info);
        let cfg = self.config.clone();
        self.expect_ack(Msg::Configure(cfg), "Configure")
    }

    /// One request and its answer on the current link (no recovery).
    fn call(&mut self, m: Msg) -> Result<Msg, RemoteError> {
        let request = m.name();
        let link = self
            .link
            .as_mut()
            .ok_or(RemoteError::Link(LinkError::Closed))?;
        link.send(encode_msg(&m)?)?;
        let r = link
            .recv(self.opts.request_timeout)?
            .ok_or(RemoteError::NoAnswer {
                request,
                secs: self.opts.request_timeout.as_secs_f64(),
            })?;
        match decode_msg(&r.bytes)? {
            Msg::Error { code, text } => Err(RemoteError::Agent { code, text }),
            m => Ok(m),
        }
    }

    fn expect_ack(&mut self, m: Msg, request: &'static str) -> Result<(), RemoteError> {
        match self.call(m)? {
            Msg::Ack => Ok(()),
            other => Err(RemoteError::Unexpected {
                request,
                got: other.name(),
            }),
        }
    }

    /// [`Self::request`] (with recovery) of a message answered by `Ack`.
    fn request_ack(&mut self, m: Msg, request: &'static str) -> Result<(), RemoteError> {
        match self.request(m)? {
            Msg::Ack => Ok(()),
            other => Err(RemoteError::Unexpected {
                request,
                got: other.name(),
            }),
        }
    }

    fn put_checkpoint(&mut self, bytes: &[u8]) -> Result<(), RemoteError> {
        self.upload(bytes, false)
    }

    /// [`Self::upload`], reopening the link (up to `max_reconnects` times) when it fails. No replay:
    /// the upload replaces the engine's state.
    fn upload_reconnecting(&mut self, bytes: &[u8], weights_only: bool) -> Result<(), RemoteError> {
        let mut r = Err(RemoteError::Link(LinkError::Closed));
        for _ in 0..=self.opts.max_reconnects {
            if self.link.is_none() {
                // A reconnect like `recover()`'s: counted, and the factory sees its attempt number.
                let n = {
                    let mut t = self.tel();
                    t.reconnects += 1;
                    t.reconnects
                };
                match self.open(n + 1) {
                    Ok(()) => {}
                    Err(e) if e.is_link() => {
                        // `open` keeps a link whose handshake failed: drop it so the next round
                        // reopens instead of uploading over it.
                        self.close_link();
                        r = Err(e);
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            r = self.upload(bytes, weights_only);
            match &r {
                Err(e) if e.is_link() => self.close_link(),
                _ => break,
            }
        }
        r
    }

    /// Uploads `bytes` in chunks as `PutCheckpoint` (full restore) or `PutWeights` (`--init`).
    fn upload(&mut self, bytes: &[u8], weights_only: bool) -> Result<(), RemoteError> {
        let total = bytes.len() as u64;
        let mut off = 0;
        loop {
            let end = (off + CHUNK).min(bytes.len());
            let (offset, data) = (off as u64, bytes[off..end].to_vec());
            let (m, name) = if weights_only {
                let m = Msg::PutWeights {
                    offset,
                    total,
                    data,
                };
                (m, "PutWeights")
            } else {
                let m = Msg::PutCheckpoint {
                    offset,
                    total,
                    data,
                };
                (m, "PutCheckpoint")
            };
            self.expect_ack(m, name)?;
            off = end;
            if off >= bytes.len() {
                return Ok(());
            }
        }
    }

    fn get_checkpoint(&mut self) -> Result<Vec<u8>, RemoteError> {
        let mut out = Vec::new();
        loop {
            match self.call(Msg::GetCheckpoint {
                offset: out.len() as u64,
            })? {
                Msg::CheckpointChunk {
                    offset,
                    total,
                    data,
                } if offset == out.len() as u64 => {
                    out.extend_from_slice(&data);
                    if out.len() as u64 >= total {
                        return Ok(out);
                    }
                    if data.is_empty() {
                        return Err(RemoteError::Unexpected {
                            request: "GetCheckpoint",
                            got: "empty chunk",
                        });
                    }
                }
                other => {
                    return Err(RemoteError::Unexpected {
                        request: "GetCheckpoint",
                        got: other.name(),
                    });
                }
            }
        }
    }

    /// Re-establish the link and bring the board back to the state after the logged operations.
    fn recover(&mut self, cause: RemoteError) -> Result<(), RemoteError> {
        let mut last = cause.to_string();
        for _ in 0..self.opts.max_reconnects {
            let n = {
                let mut t = self.tel();
                t.reconnects += 1;
                t.reconnects
            };
            match self.reopen(n + 1) {
                Ok(()) => return Ok(()),
                Err(e) if e.is_link() => last = e.to_string(),
                Err(e) => return Err(e),
            }
        }
        self.close_link();
        Err(RemoteError::Unreachable {
            attempts: self.opts.max_reconnects,
            last,
        })
    }

    fn reopen(&mut self, attempt: u32) -> Result<(), RemoteError> {
        self.open(attempt)?;
        if let Some(b) = self.base.take() {
            let r = self.put_checkpoint(&b);
            self.base = Some(b);
            r?;
        }
        let log = std::mem::take(&mut self.log);
        let mut result = Ok(());
        for op in &log {
            let r = match op {
                Op::Step(b) => match self.call(Msg::Step(b.clone())) {
                    Ok(Msg::StepDone(_)) => Ok(()),
                    Ok(other) => Err(RemoteError::Unexpected {
                        request: "Step",
                        got: other.name(),
                    }),
                    Err(e) => Err(e),
                },
                Op::Skip(lr) => self.expect_ack(Msg::Skip { lr: *lr }, "Skip"),
                Op::CalibrateBn(images, index) => self.expect_ack(
                    Msg::CalibrateBn {
                        images: images.clone(),
                        index: *index,
                    },
                    "CalibrateBn",
                ),
            };
            if r.is_err() {
                result = r;
                break;
            }
        }
        self.log = log;
        result
    }

    /// A request with recovery: on a link failure, reconnect, restore, replay, retry.
    fn request(&mut self, m: Msg) -> Result<Msg, RemoteError> {
        loop {
            if self.link.is_none() {
                self.recover(RemoteError::Link(LinkError::Closed))?;
            }
            match self.call(m.clone()) {
                Err(e) if e.is_link() => {
                    self.close_link();
                    self.recover(e)?;
                }
                r => return r,
            }
        }
    }

    fn refresh_checkpoint(&mut self) -> Result<Vec<u8>, RemoteError> {
        loop {
            if self.link.is_none() {
                self.recover(RemoteError::Link(LinkError::Closed))?;
            }
            match self.get_checkpoint() {
                Ok(b) => {
                    self.base = Some(b.clone());
                    self.log.clear();
                    return Ok(b);
                }
                Err(e) if e.is_link() => {
                    self.close_link();
                    self.recover(e)?;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl StepEngine for RemoteEngine {
    fn config(&self) -> &EngineConfig {
        &self.config
    }

    fn step(&mut self, batch: &Batch) -> Result<StepResult, EngineError> {
        let g = self.inner.get_mut().unwrap_or_else(|e| e.into_inner());
        let r = match g.request(Msg::Step(batch.clone())) {
            Ok(Msg::StepDone(r)) => *r,
            Ok(other) => {
                return Err(RemoteError::Unexpected {
                    request: "Step",
                    got: other.name(),
                }
                .into_engine());
            }
            Err(RemoteError::Agent {
                code: ErrorCode::Batch,
                text,
            }) => {
                return Err(EngineError::Batch {
                    seq: batch.seq,
                    reason: text,
                });
            }
            Err(e) => return Err(e.into_engine()),
        };
        g.log.push(Op::Step(batch.clone()));
        let every = g.opts.checkpoint_every;
        if every > 0 && g.log.len() as u64 >= every {
            g.refresh_checkpoint().map_err(RemoteError::into_engine)?;
        }
        Ok(r)
    }

    fn skip_step(&mut self, lr: f32) -> Result<(), EngineError> {
        let g = self.inner.get_mut().unwrap_or_else(|e| e.into_inner());
        g.request_ack(Msg::Skip { lr }, "Skip")
            .map_err(RemoteError::into_engine)?;
        g.log.push(Op::Skip(lr));
        Ok(())
    }

    fn calibrate_bn(&mut self, images: &[u8], index: u32) -> Result<(), EngineError> {
        let g = self.inner.get_mut().unwrap_or_else(|e| e.into_inner());
        let m = Msg::CalibrateBn {
            images: images.to_vec(),
            index,
        };
        g.request_ack(m, "CalibrateBn")
            .map_err(RemoteError::into_engine)?;
        // Calibration changes the BN statistics: a reconnect must replay it.
        g.log.push(Op::CalibrateBn(images.to_vec(), index));
        Ok(())
    }

    fn evaluate(&mut self, images: &[u8], labels: &[u8]) -> Result<EvalResult, EngineError> {
        let px = self.config.input.pixels();
        if px == 0 || images.len() != labels.len() * px {
            return Err(EngineError::Batch {
                seq: u64::MAX,
                reason: format!(
                    "evaluate: {} image bytes for {} labels of {px} pixels",
                    images.len(),
                    labels.len()
                ),
            });
        }
        let g = self.inner.get_mut().unwrap_or_else(|e| e.into_inner());
        let per = (g.opts.eval_chunk_bytes / px).max(1);
        let mut total = EvalResult::default();
        for (i, l) in labels.chunks(per).enumerate() {
            let im = images[i * per * px..(i * per + l.len()) * px].to_vec();
            match g.request(Msg::Evaluate {
                images: im,
                labels: l.to_vec(),
            }) {
                Ok(Msg::EvalDone(r)) => total.merge(&r),
                Ok(other) => {
                    return Err(RemoteError::Unexpected {
                        request: "Evaluate",
                        got: other.name(),
                    }
                    .into_engine());
                }
                Err(e) => return Err(e.into_engine()),
            }
        }
        Ok(total)
    }

    /// Counters from the board. If it cannot be reached, the last value read (the trait has no error
    /// path; the next fallible call reports the link failure).
    fn counters(&self) -> Counters {
        let mut g = self.lock();
        if let Ok(Msg::CountersAre(c)) = g.request(Msg::ReadCounters) {
            g.last_counters = c;
        }
        g.last_counters
    }

    fn checkpoint(&self) -> Result<Vec<u8>, EngineError> {
        self.lock()
            .refresh_checkpoint()
            .map_err(RemoteError::into_engine)
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<(), EngineError> {
        let g = self.inner.get_mut().unwrap_or_else(|e| e.into_inner());
        g.upload_reconnecting(bytes, false)
            .map_err(RemoteError::into_engine)?;
        g.base = Some(bytes.to_vec());
        g.log.clear();
        Ok(())
    }

    fn load_weights(&mut self, checkpoint: &[u8]) -> Result<(), EngineError> {
        let g = self.inner.get_mut().unwrap_or_else(|e| e.into_inner());
        // Upload, then read back the rebuilt engine's full state as the recovery base. A link
        // failure in either half repeats both: `recover()` would replay the state from before the
        // load and the run would silently start from scratch.
        let mut r = Err(RemoteError::Link(LinkError::Closed));
        for _ in 0..=g.opts.max_reconnects {
            r = g
                .upload_reconnecting(checkpoint, true)
                .and_then(|()| g.get_checkpoint());
            match &r {
                Err(e) if e.is_link() => g.close_link(),
                _ => break,
            }
        }
        let base = r.map_err(RemoteError::into_engine)?;
        g.base = Some(base);
        g.log.clear();
        Ok(())
    }
}

/// Engine factory for the `sim` board's in-process agent.
pub type SharedFactory = Arc<
    dyn Fn(&EngineConfig, Option<&[u8]>) -> Result<Box<dyn StepEngine>, EngineError> + Send + Sync,
>;

/// How to reach each kind of board.
#[derive(Clone, Default)]
pub struct ConnectOptions {
    pub remote: RemoteOptions,
    /// `sim`: the engine factory the in-process agent uses.
    pub sim_factory: Option<SharedFactory>,
    /// `sim`: what the in-process agent reports.
    pub sim_info: Option<BoardInfo>,
    /// `pty`: the agent program and its arguments; `{port}` is replaced by the pty path. Default:
    /// this executable with `agent --port {port}`.
    pub agent_command: Option<(PathBuf, Vec<String>)>,
    /// Emulate a serial line rate on the host's writes (`sim` and `pty`).
    pub emulate_baud: Option<u32>,
    /// Inject faults on the host's end (tests).
    pub faults: Option<FaultConfig>,
}

fn wrap(
    t: Box<dyn Transport>,
    baud: Option<u32>,
    faults: Option<FaultConfig>,
    attempt: u32,
) -> Box<dyn Transport> {
    let t: Box<dyn Transport> = match baud {
        Some(b) => Box::new(Throttled::new(t, b)),
        None => t,
    };
    match faults {
        // A different fault pattern per connection, still seeded.
        Some(f) => Box::new(Faulty::new(
            t,
            FaultConfig {
                seed: f.seed.wrapping_add(u64::from(attempt)),
                ..f
            },
        )),
        None => t,
    }
}

/// A transport factory for `spec` (one fresh transport per connection attempt).
pub fn transport_factory(
    spec: &BoardSpec,
    opts: &ConnectOptions,
) -> Result<TransportFactory, RemoteError> {
    let (baud, faults) = (opts.emulate_baud, opts.faults);
    Ok(match spec.clone() {
        BoardSpec::Sim => {
            let factory = opts
                .sim_factory
                .clone()
                .ok_or_else(|| RemoteError::Open("the sim board needs an engine factory".into()))?;
            let info = opts
                .sim_info
                .clone()
                .unwrap_or_else(|| BoardInfo::simulated("sim", (16, 16)));
            Box::new(move |attempt| {
                let (host, agent) = e2t_link::in_proc_pair();
                let (f, i) = (factory.clone(), info.clone());
                std::thread::Builder::new()
                    .name("e2t-sim-agent".into())
                    .spawn(move || {
                        // Ends when the host drops its end of the pipe.
                        let _ = serve(
                            Box::new(agent),
                            &|c: &EngineConfig, init: Option<&[u8]>| f(c, init),
                            i,
                            Box::new(NoPower),
                        );
                    })
                    .map_err(|e| {
                        RemoteError::Open(format!("cannot start the sim agent thread: {e}"))
                    })?;
                Ok(wrap(Box::new(host), baud, faults, attempt))
            })
        }
        BoardSpec::Pty => {
            let (prog, args) = match opts.agent_command.clone() {
                Some(c) => c,
                None => (
                    std::env::current_exe().map_err(|e| {
                        RemoteError::Open(format!("cannot find this executable: {e}"))
                    })?,
                    vec!["agent".into(), "--port".into(), "{port}".into()],
                ),
            };
            Box::new(move |attempt| {
                let t =
                    PtyChild::spawn(&prog, &args).map_err(|e| RemoteError::Open(e.to_string()))?;
                Ok(wrap(Box::new(t), baud, faults, attempt))
            })
        }
        BoardSpec::Serial { path, baud: line } => Box::new(move |attempt| {
            let t =
                e2t_link::open_serial(&path, line).map_err(|e| RemoteError::Open(e.to_string()))?;
            Ok(wrap(Box::new(t), None, faults, attempt))
        }),
    })
}

/// Connect to the board named by `spec` and configure its engine.
pub fn connect(
    spec: &BoardSpec,
    config: &EngineConfig,
    opts: &ConnectOptions,
) -> Result<RemoteEngine, RemoteError> {
    RemoteEngine::new(
        transport_factory(spec, opts)?,
        opts.remote.clone(),
        config.clone(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn board_specs_parse_with_clear_errors() {
        assert_eq!("sim".parse::<BoardSpec>(), Ok(BoardSpec::Sim));
        assert_eq!("pty".parse::<BoardSpec>(), Ok(BoardSpec::Pty));
        assert_eq!(
            "serial:/dev/ttyUSB1@921600".parse::<BoardSpec>(),
            Ok(BoardSpec::Serial {
                path: "/dev/ttyUSB1".into(),
                baud: 921_600
            })
        );
        assert_eq!(
            "serial:/dev/ttyPS0".parse::<BoardSpec>(),
            Ok(BoardSpec::Serial {
                path: "/dev/ttyPS0".into(),
                baud: DEFAULT_BAUD
            })
        );
        for (s, why) in [
            ("usb", "unknown kind"),
            ("serial:", "missing device path"),
            ("serial:/dev/x@fast", "'fast'"),
            ("serial:/dev/x@0", "positive"),
        ] {
            let e = s.parse::<BoardSpec>().unwrap_err();
            assert!(
                e.to_string().contains(why) && e.to_string().contains(s),
                "{e}"
            );
        }
        let s = BoardSpec::Serial {
            path: "/dev/ttyUSB1".into(),
            baud: 115_200,
        };
        assert_eq!(s.to_string().parse::<BoardSpec>(), Ok(s));
    }
}
