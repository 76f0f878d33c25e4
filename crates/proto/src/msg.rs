//! Messages between the host and the board agent (postcard-encoded).
//!
//! Request/response: the host sends one request and waits for its response; the link delivers each
//! message exactly once and in order within a session. Large payloads (checkpoints, evaluation sets)
//! travel in chunks of at most [`CHUNK`] bytes so neither side needs a giant single message.

use e2t_core::{Batch, Counters, EngineConfig, EvalResult, Mode, Precision, Rail, StepResult};
use serde::{Deserialize, Serialize};

/// Bump on any change of [`Msg`]'s encoding (3: `MethodConfig::psg_fallback`; 4: `CalibrateBn`;
/// 5: `MethodConfig::slu_noise_peak_lr`; 6: `MethodConfig::slu_identity_init`).
pub const PROTOCOL_VERSION: u16 = 6;
/// "E2TL": guards against talking to something that is not an e2train agent at all.
pub const MAGIC: u32 = 0x4532_544c;
/// Largest encoded message either side accepts (a CIFAR batch of 512 is 1.5 MiB).
pub const MAX_MESSAGE: usize = 8 * 1024 * 1024;
/// Chunk size for checkpoints.
pub const CHUNK: usize = 256 * 1024;

/// First message of every session, host to agent. Field order is frozen across versions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub magic: u32,
    pub version: u16,
    /// Free text naming the host program, for the agent's log.
    pub host: String,
}

impl Hello {
    pub fn new(host: impl Into<String>) -> Self {
        Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            host: host.into(),
        }
    }
}

/// What the agent says about itself in answer to [`Hello`]. Field order of the first two fields is
/// frozen across versions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BoardInfo {
    pub magic: u32,
    pub protocol_version: u16,
    pub board_id: String,
    /// Name of the loaded bitstream (`soft` when the accelerator is the software model).
    pub bitstream_id: String,
    /// SHA-256 of the loaded bitstream as 64 lowercase hex digits (`None` for the soft model).
    pub bitstream_sha256: Option<String>,
    /// Accelerator array (rows, cols).
    pub array: (u32, u32),
    pub modes: Vec<Mode>,
    pub precisions: Vec<Precision>,
    /// Rails the agent's power monitor reports (empty in simulation).
    pub rails: Vec<Rail>,
}

impl BoardInfo {
    /// An agent running the software model on the host machine.
    pub fn simulated(board_id: impl Into<String>, array: (u32, u32)) -> Self {
        BoardInfo {
            magic: MAGIC,
            protocol_version: PROTOCOL_VERSION,
            board_id: board_id.into(),
            bitstream_id: "soft".into(),
            bitstream_sha256: None,
            array,
            modes: vec![Mode::Int16, Mode::Int8],
            precisions: vec![Precision::Fp32, Precision::Accel],
            rails: Vec::new(),
        }
    }
}

/// Error classes the agent reports; the text says what exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The request did not decode.
    Decode,
    /// Protocol version or magic mismatch.
    Version,
    /// A request that needs an engine arrived before `Configure`.
    NotConfigured,
    /// A message that is not a request, or out of order (e.g. a checkpoint chunk at the wrong offset).
    Unexpected,
    /// The engine refused the configuration.
    Config,
    /// The engine refused a batch.
    Batch,
    Checkpoint,
    Accelerator,
}

/// Every message of the protocol. Variant 0 is the handshake and stays variant 0.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Msg {
    Hello(Hello),
    HelloAck(BoardInfo),
    /// Build a fresh engine (drops any previous one and its state).
    Configure(EngineConfig),
    /// Generic success without data (Configure, Skip, PutCheckpoint, Reset).
    Ack,
    Step(Batch),
    /// Boxed: a step result is much larger than the other messages (postcard encodes a box as
    /// its content, so the wire format is that of `StepResult`).
    StepDone(Box<StepResult>),
    Skip {
        lr: f32,
    },
    /// Evaluate a chunk; the host merges the chunks' results.
    Evaluate {
        images: Vec<u8>,
        labels: Vec<u8>,
    },
    EvalDone(EvalResult),
    ReadCounters,
    CountersAre(Counters),
    /// Ask for checkpoint bytes from `offset`; offset 0 takes a fresh snapshot of the engine.
    GetCheckpoint {
        offset: u64,
    },
    CheckpointChunk {
        offset: u64,
        total: u64,
        data: Vec<u8>,
    },
    /// Upload checkpoint bytes; the chunk that completes `total` restores the engine.
    PutCheckpoint {
        offset: u64,
        total: u64,
        data: Vec<u8>,
    },
    /// Drop the engine (the next request must be `Configure`).
    Reset,
    Error {
        code: ErrorCode,
        text: String,
    },
    /// `--init`: upload another run's checkpoint; the chunk that completes `total` rebuilds the
    /// engine from the current configuration with those weights (fresh optimizer, RNG, counters).
    PutWeights {
        offset: u64,
        total: u64,
        data: Vec<u8>,
    },
    /// Re-estimate BatchNorm statistics from training images ("precise BN"), chunk `index` of a
    /// sequence starting at 0; answered with `Ack`.
    CalibrateBn {
        images: Vec<u8>,
        index: u32,
    },
}

impl Msg {
    /// Short name for logs and error messages.
    pub fn name(&self) -> &'static str {
        match self {
            Msg::Hello(_) => "Hello",
            Msg::HelloAck(_) => "HelloAck",
            Msg::Configure(_) => "Configure",
            Msg::Ack => "Ack",
            Msg::Step(_) => "Step",
            Msg::StepDone(_) => "StepDone",
            Msg::Skip { .. } => "Skip",
            Msg::Evaluate { .. } => "Evaluate",
            Msg::EvalDone(_) => "EvalDone",
            Msg::CalibrateBn { .. } => "CalibrateBn",
            Msg::ReadCounters => "ReadCounters",
            Msg::CountersAre(_) => "CountersAre",
            Msg::GetCheckpoint { .. } => "GetCheckpoint",
            Msg::CheckpointChunk { .. } => "CheckpointChunk",
            Msg::PutCheckpoint { .. } => "PutCheckpoint",
            Msg::Reset => "Reset",
            Msg::Error { .. } => "Error",
            Msg::PutWeights { .. } => "PutWeights",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("message of {len} bytes exceeds the maximum of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("message does not decode: {0}")]
    Decode(postcard::Error),
    #[error("message does not encode: {0}")]
    Encode(postcard::Error),
    #[error("{len} trailing bytes after a {name} message")]
    Trailing { name: &'static str, len: usize },
}

pub fn encode_msg(m: &Msg) -> Result<Vec<u8>, ProtoError> {
    let v = postcard::to_stdvec(m).map_err(ProtoError::Encode)?;
    if v.len() > MAX_MESSAGE {
        return Err(ProtoError::TooLarge {
            len: v.len(),
            max: MAX_MESSAGE,
        });
    }
    Ok(v)
}

/// Decode one whole message; trailing bytes are an error (a framing bug must not go unnoticed).
pub fn decode_msg(bytes: &[u8]) -> Result<Msg, ProtoError> {
    if bytes.len() > MAX_MESSAGE {
        return Err(ProtoError::TooLarge {
            len: bytes.len(),
            max: MAX_MESSAGE,
        });
    }
    let (m, rest) = postcard::take_from_bytes::<Msg>(bytes).map_err(ProtoError::Decode)?;
    if !rest.is_empty() {
        return Err(ProtoError::Trailing {
            name: m.name(),
            len: rest.len(),
        });
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use e2t_core::{
        InputShape, LayerPsgStats, MethodConfig, ModelKind, PhaseCounters, PowerSample, StepDiag,
        TrainOnly,
    };
    use proptest::prelude::*;

    fn config(seed: u64) -> EngineConfig {
        EngineConfig {
            model: ModelKind::ResNet { depth: 20 },
            input: InputShape {
                channels: 1,
                height: 28,
                width: 28,
            },
            classes: 10,
            mean: vec![0.286],
            std: vec![0.353],
            method: MethodConfig::e2train(),
            momentum: 0.9,
            weight_decay: 5e-4,
            seed,
            train_only: TrainOnly::All,
            array: (16, 16),
        }
    }

    fn rail() -> impl Strategy<Value = Rail> {
        prop::sample::select(Rail::ALL.to_vec())
    }

    fn step_result() -> impl Strategy<Value = StepResult> {
        (
            any::<u64>(),
            any::<f32>(),
            any::<u32>(),
            any::<[u64; 4]>(),
            proptest::collection::vec(
                (
                    any::<u64>(),
                    rail(),
                    any::<Option<u32>>(),
                    any::<Option<u32>>(),
                ),
                0..6,
            ),
            proptest::collection::vec((".{0,8}", any::<u64>(), any::<u64>()), 0..3),
        )
            .prop_map(|(seq, loss, correct, c, power, psg)| StepResult {
                seq,
                loss,
                correct,
                samples: correct / 2,
                counters: Counters {
                    total_cycles: c[0],
                    busy_cycles: c[1],
                    macs_int8: c[2],
                    gemms: c[3],
                    ..Default::default()
                },
                power: power
                    .into_iter()
                    .map(|(t_ns, rail, millivolts, milliamps)| PowerSample {
                        t_ns,
                        rail,
                        millivolts,
                        milliamps,
                    })
                    .collect(),
                diag: StepDiag {
                    psg: psg
                        .into_iter()
                        .map(|(layer, predicted, uncertain)| LayerPsgStats {
                            layer,
                            predicted,
                            uncertain,
                            tiles: 3,
                            recomputed_tiles: 1,
                        })
                        .collect(),
                    slu_executed: vec![("b1".into(), 3, 8)],
                    slu_decisive: vec![("b1".into(), 2)],
                    phases: PhaseCounters {
                        backward_data: Counters {
                            bytes_out: 77,
                            ..Default::default()
                        },
                        ..Default::default()
                    },
                },
            })
    }

    fn msg() -> impl Strategy<Value = Msg> {
        let bytes = || proptest::collection::vec(any::<u8>(), 0..300);
        prop_oneof![
            ".{0,20}".prop_map(|h| Msg::Hello(Hello::new(h))),
            (
                any::<(u32, u32)>(),
                ".{0,10}",
                proptest::option::of("[0-9a-f]{64}")
            )
                .prop_map(|(a, id, sha)| {
                    let mut b = BoardInfo::simulated(id, a);
                    b.bitstream_sha256 = sha;
                    b.rails = Rail::ALL.to_vec();
                    Msg::HelloAck(b)
                }),
            any::<u64>().prop_map(|s| Msg::Configure(config(s))),
            Just(Msg::Ack),
            (any::<u64>(), any::<f32>(), bytes(), bytes()).prop_map(|(seq, lr, images, labels)| {
                Msg::Step(Batch {
                    seq,
                    lr,
                    images,
                    labels,
                })
            }),
            step_result().prop_map(|r| Msg::StepDone(Box::new(r))),
            any::<f32>().prop_map(|lr| Msg::Skip { lr }),
            (bytes(), bytes()).prop_map(|(images, labels)| Msg::Evaluate { images, labels }),
            (bytes(), any::<u32>()).prop_map(|(images, index)| Msg::CalibrateBn { images, index }),
            (any::<f64>(), any::<u64>(), any::<u64>()).prop_map(|(loss_sum, correct, samples)| {
                Msg::EvalDone(EvalResult {
                    loss_sum,
                    correct,
                    samples,
                })
            }),
            Just(Msg::ReadCounters),
            any::<u64>().prop_map(|g| Msg::CountersAre(Counters {
                gemms: g,
                ..Default::default()
            })),
            any::<u64>().prop_map(|offset| Msg::GetCheckpoint { offset }),
            (any::<u64>(), any::<u64>(), bytes()).prop_map(|(offset, total, data)| {
                Msg::CheckpointChunk {
                    offset,
                    total,
                    data,
                }
            }),
            (any::<u64>(), any::<u64>(), bytes()).prop_map(|(offset, total, data)| {
                Msg::PutCheckpoint {
                    offset,
                    total,
                    data,
                }
            }),
            Just(Msg::Reset),
            ".{0,40}".prop_map(|text| Msg::Error {
                code: ErrorCode::Batch,
                text
            }),
            (any::<u64>(), any::<u64>(), bytes()).prop_map(|(offset, total, data)| {
                Msg::PutWeights {
                    offset,
                    total,
                    data,
                }
            }),
        ]
    }

    /// Equality that treats NaN payloads as equal bit patterns (proptest generates NaNs).
    fn same(a: &Msg, b: &Msg) -> bool {
        encode_msg(a).unwrap() == encode_msg(b).unwrap()
    }

    proptest! {
        #[test]
        fn messages_round_trip(m in msg()) {
            let bytes = encode_msg(&m).unwrap();
            let back = decode_msg(&bytes).unwrap();
            prop_assert!(same(&m, &back), "{:?} != {:?}", m, back);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let _ = decode_msg(&bytes);
        }

        #[test]
        fn truncated_messages_are_errors(m in msg(), cut in any::<prop::sample::Index>()) {
            let bytes = encode_msg(&m).unwrap();
            let i = cut.index(bytes.len());
            // A strict prefix never decodes to a whole message with nothing left over, except when
            // the prefix itself happens to be a complete shorter message (e.g. a unit variant).
            if let Ok(short) = decode_msg(&bytes[..i]) {
                prop_assert!(encode_msg(&short).unwrap().len() == i);
            }
        }
    }

    #[test]
    fn batch_encoding_is_compact() {
        // 128 Fashion-MNIST images: 100 352 pixel bytes + 128 labels.
        let b = Batch {
            seq: 1,
            lr: 0.1,
            images: vec![200; 128 * 784],
            labels: vec![3; 128],
        };
        let payload = b.images.len() + b.labels.len();
        let enc = encode_msg(&Msg::Step(b)).unwrap();
        assert!(
            enc.len() - payload <= 16,
            "{} bytes of overhead",
            enc.len() - payload
        );
    }

    #[test]
    fn batch_frames_are_at_least_95_percent_payload() {
        use crate::frame::{FLAG_FIN, Frame, FrameKind};
        // The target, computed for the link's default segment (4 KiB) and the maximum one.
        let b = Batch {
            seq: 9,
            lr: 0.05,
            images: (0..128 * 784).map(|i| (i * 31 % 251) as u8).collect(),
            labels: vec![7; 128],
        };
        let payload = (b.images.len() + b.labels.len()) as f64;
        let enc = encode_msg(&Msg::Step(b)).unwrap();
        for seg in [4096, crate::MAX_PAYLOAD] {
            let chunks: Vec<&[u8]> = enc.chunks(seg).collect();
            let wire: usize = chunks
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let flags = if i + 1 == chunks.len() { FLAG_FIN } else { 0 };
                    Frame {
                        kind: FrameKind::Data,
                        flags,
                        session: 1,
                        seq: i as u32,
                        ack: 0,
                        sack: 0,
                        payload: c.to_vec(),
                    }
                    .encode()
                    .len()
                })
                .sum();
            let eff = payload / wire as f64;
            assert!(eff >= 0.95, "segment {seg}: efficiency {eff}");
            assert!(eff >= 0.99, "segment {seg}: efficiency {eff}");
        }
    }

    #[test]
    fn hello_prefix_is_stable() {
        // magic (varint u32) then version (varint u16) right after the variant index 0.
        let enc = encode_msg(&Msg::Hello(Hello::new(""))).unwrap();
        assert_eq!(enc[0], 0);
        let (magic, rest) = postcard::take_from_bytes::<u32>(&enc[1..]).unwrap();
        let (version, _) = postcard::take_from_bytes::<u16>(rest).unwrap();
        assert_eq!((magic, version), (MAGIC, PROTOCOL_VERSION));
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        let mut enc = encode_msg(&Msg::Ack).unwrap();
        enc.push(0);
        assert!(matches!(
            decode_msg(&enc),
            Err(ProtoError::Trailing { name: "Ack", .. })
        ));
    }
}
