//! The board agent: serves the protocol on a link and runs an engine.

use std::time::Duration;

use e2t_core::{EngineConfig, EngineError, StepEngine, StepResult};
use e2t_link::{Link, LinkConfig, LinkError, Transport};
use e2t_proto::msg::CHUNK;
use e2t_proto::{BoardInfo, ErrorCode, MAGIC, Msg, PROTOCOL_VERSION, decode_msg, encode_msg};

use crate::power::PowerMonitor;

/// Builds an engine from the host's configuration, optionally starting from the weights of another
/// run's checkpoint (`--init`); the CLI passes `e2t_train::build_engine` / `build_engine_with_init`.
pub type EngineFactory<'a> =
    &'a dyn Fn(&EngineConfig, Option<&[u8]>) -> Result<Box<dyn StepEngine>, EngineError>;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The transport is gone (device closed, peer process exited). On a UART this does not happen.
    #[error("agent link: {0}")]
    Link(#[from] LinkError),
}

fn engine_code(e: &EngineError) -> ErrorCode {
    match e {
        EngineError::Config(_) => ErrorCode::Config,
        EngineError::Batch { .. } => ErrorCode::Batch,
        EngineError::Checkpoint(_) => ErrorCode::Checkpoint,
        EngineError::Accelerator(_) => ErrorCode::Accelerator,
    }
}

fn err(code: ErrorCode, text: impl Into<String>) -> Msg {
    Msg::Error {
        code,
        text: text.into(),
    }
}

/// Per-session protocol state of the agent.
struct Session<'a> {
    factory: EngineFactory<'a>,
    info: BoardInfo,
    power: Box<dyn PowerMonitor>,
    engine: Option<Box<dyn StepEngine>>,
    /// The last applied batch and its result: a repeated `seq` is answered, not applied again.
    last: Option<StepResult>,
    ckpt_out: Option<Vec<u8>>,
    ckpt_in: Vec<u8>,
    weights_in: Vec<u8>,
}

impl Session<'_> {
    fn handle(&mut self, m: Msg) -> Msg {
        match m {
            Msg::Hello(h) => {
                if h.magic != MAGIC || h.version != PROTOCOL_VERSION {
                    return err(
                        ErrorCode::Version,
                        format!(
                            "host speaks protocol {} (magic {:#x}), this agent speaks {PROTOCOL_VERSION}",
                            h.version, h.magic
                        ),
                    );
                }
                self.last = None;
                self.ckpt_out = None;
                self.ckpt_in.clear();
                self.weights_in.clear();
                Msg::HelloAck(self.info.clone())
            }
            Msg::Configure(cfg) => {
                self.engine = None;
                self.last = None;
                match (self.factory)(&cfg, None) {
                    Ok(e) => {
                        self.engine = Some(e);
                        Msg::Ack
                    }
                    Err(e) => err(engine_code(&e), e.detail()),
                }
            }
            Msg::Reset => {
                self.engine = None;
                self.last = None;
                Msg::Ack
            }
            other => self.with_engine(other),
        }
    }

    fn with_engine(&mut self, m: Msg) -> Msg {
        let name = m.name();
        let Some(engine) = self.engine.as_mut() else {
            return err(ErrorCode::NotConfigured, format!("{name} before Configure"));
        };
        match m {
            Msg::Step(b) => {
                if let Some(r) = self.last.as_ref().filter(|r| r.seq == b.seq) {
                    return Msg::StepDone(Box::new(r.clone()));
                }
                let before = self.power.sample();
                match engine.step(&b) {
                    Ok(mut r) => {
                        r.power.extend(before);
                        r.power.extend(self.power.sample());
                        self.last = Some(r.clone());
                        Msg::StepDone(Box::new(r))
                    }
                    Err(e) => err(engine_code(&e), e.detail()),
                }
            }
            Msg::Skip { lr } => match engine.skip_step(lr) {
                Ok(()) => Msg::Ack,
                Err(e) => err(engine_code(&e), e.detail()),
            },
            Msg::Evaluate { images, labels } => match engine.evaluate(&images, &labels) {
                Ok(r) => Msg::EvalDone(r),
                Err(e) => err(engine_code(&e), e.detail()),
            },
            Msg::CalibrateBn { images, index } => match engine.calibrate_bn(&images, index) {
                Ok(()) => Msg::Ack,
                Err(e) => err(engine_code(&e), e.detail()),
            },
            Msg::ReadCounters => Msg::CountersAre(engine.counters()),
            Msg::GetCheckpoint { offset } => {
                if offset == 0 {
                    match engine.checkpoint() {
                        Ok(b) => self.ckpt_out = Some(b),
                        Err(e) => return err(engine_code(&e), e.detail()),
                    }
                }
                let Some(b) = self.ckpt_out.as_ref() else {
                    return err(
                        ErrorCode::Unexpected,
                        format!("GetCheckpoint at offset {offset} before offset 0"),
                    );
                };
                let Ok(off) = usize::try_from(offset) else {
                    return err(
                        ErrorCode::Unexpected,
                        format!("checkpoint offset {offset} out of range"),
                    );
                };
                if off > b.len() {
                    return err(
                        ErrorCode::Unexpected,
                        format!("checkpoint offset {off} beyond {} bytes", b.len()),
                    );
                }
                let end = (off + CHUNK).min(b.len());
                Msg::CheckpointChunk {
                    offset,
                    total: b.len() as u64,
                    data: b[off..end].to_vec(),
                }
            }
            Msg::PutCheckpoint {
                offset,
                total,
                data,
            } => {
                let bytes = match take_chunk(&mut self.ckpt_in, offset, total, &data) {
                    Ok(Some(b)) => b,
                    Ok(None) => return Msg::Ack,
                    Err((code, text)) => return err(code, text),
                };
                self.last = None;
                match engine.restore(&bytes) {
                    Ok(()) => Msg::Ack,
                    Err(e) => err(engine_code(&e), e.detail()),
                }
            }
            Msg::PutWeights {
                offset,
                total,
                data,
            } => {
                let bytes = match take_chunk(&mut self.weights_in, offset, total, &data) {
                    Ok(Some(b)) => b,
                    Ok(None) => return Msg::Ack,
                    Err((code, text)) => return err(code, text),
                };
                // A fresh engine of the same configuration, started from those weights: the
                // optimizer, RNG and counters begin anew, as `--init` promises.
                let cfg = engine.config().clone();
                self.last = None;
                match (self.factory)(&cfg, Some(&bytes)) {
                    Ok(e) => {
                        self.engine = Some(e);
                        Msg::Ack
                    }
                    Err(e) => err(engine_code(&e), e.detail()),
                }
            }
            other => err(
                ErrorCode::Unexpected,
                format!("{} is not a request", other.name()),
            ),
        }
    }
}

/// Appends one upload chunk to `buf`; returns the whole upload when this chunk completes `total`.
/// A chunk out of order or past its total discards the partial upload and gives the error to answer.
fn take_chunk(
    buf: &mut Vec<u8>,
    offset: u64,
    total: u64,
    data: &[u8],
) -> Result<Option<Vec<u8>>, (ErrorCode, String)> {
    if offset != buf.len() as u64 {
        let have = buf.len();
        buf.clear();
        return Err((
            ErrorCode::Unexpected,
            format!("checkpoint chunk at {offset}, expected {have}"),
        ));
    }
    if total > e2t_proto::MAX_MESSAGE as u64 * 64 || offset + data.len() as u64 > total {
        buf.clear();
        return Err((
            ErrorCode::Checkpoint,
            format!("checkpoint chunk exceeds its total of {total} bytes"),
        ));
    }
    buf.extend_from_slice(data);
    Ok((buf.len() as u64 == total).then(|| std::mem::take(buf)))
}

/// Serve the protocol on `transport` until it closes. Each host session starts with `Hello`; the
/// engine survives host reconnects (the host re-uploads its checkpoint anyway).
pub fn serve(
    transport: Box<dyn Transport>,
    factory: EngineFactory<'_>,
    info: BoardInfo,
    power: Box<dyn PowerMonitor>,
) -> Result<(), AgentError> {
    serve_link(
        Link::accept(transport, LinkConfig::default()),
        factory,
        info,
        power,
    )
}

/// [`serve`] on an already built link (to choose the link configuration).
pub fn serve_link(
    mut link: Link,
    factory: EngineFactory<'_>,
    info: BoardInfo,
    power: Box<dyn PowerMonitor>,
) -> Result<(), AgentError> {
    let mut s = Session {
        factory,
        info,
        power,
        engine: None,
        last: None,
        ckpt_out: None,
        ckpt_in: Vec::new(),
        weights_in: Vec::new(),
    };
    loop {
        let r = match link.recv(Duration::from_millis(200)) {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            // The host went quiet; it will come back with a new session (or not at all).
            Err(LinkError::PeerSilent { .. }) => continue,
            Err(e) => return Err(e.into()),
        };
        let reply = match decode_msg(&r.bytes) {
            Ok(m) => s.handle(m),
            Err(e) => err(ErrorCode::Decode, e.to_string()),
        };
        let bytes = match encode_msg(&reply) {
            Ok(b) => b,
            Err(e) => encode_msg(&err(
                ErrorCode::Accelerator,
                format!("reply does not encode: {e}"),
            ))
            .expect("a short error message encodes"),
        };
        link.reply(r.session, bytes)?;
    }
}
