//! Board link protocol: versioned messages, COBS framing with CRC-32, compact binary encoding. No I/O.
//!
//! Two layers, both pure functions over bytes:
//! - [`frame`]: what travels on a byte stream. A frame is a fixed 18-byte header (kind, flags, session,
//!   sequence, cumulative ack, selective-ack bitmap), a payload of at most [`frame::MAX_PAYLOAD`] bytes and
//!   a CRC-32 (ISO-HDLC) over both, COBS-encoded and terminated by a single `0x00`. The decoder resyncs
//!   at every `0x00`, so any corruption costs at most the frames it touches.
//! - [`msg`]: what the host and the board agent say to each other, encoded with postcard. A message may be
//!   larger than one frame; the reliable layer (`e2t-link`) splits it into segments.
//!
//! Invariants: decoding never panics on any input (fuzzed, see `fuzz/`); every encoded frame decodes to
//! itself; the first variant of [`msg::Msg`] is the handshake and its leading fields (magic, version)
//! keep their position in every protocol version, so a mismatched peer is named, not misparsed.

pub mod frame;
pub mod msg;

pub use frame::{Frame, FrameDecoder, FrameError, FrameKind, MAX_PAYLOAD, MAX_WIRE_FRAME};
pub use msg::{
    BoardInfo, ErrorCode, Hello, MAGIC, MAX_MESSAGE, Msg, PROTOCOL_VERSION, ProtoError, decode_msg,
    encode_msg,
};
