//! Frames on a byte stream: `COBS(header | payload | crc32) 0x00`.

use crc::{CRC_32_ISO_HDLC, Crc};

/// Largest payload one frame carries. Big enough that header + CRC + COBS cost under 0.6 %,
/// small enough that one retransmission at 921600 baud costs under 0.2 s.
pub const MAX_PAYLOAD: usize = 16 * 1024;
/// Fixed header: kind, flags, session, seq, ack, sack.
pub const HEADER_LEN: usize = 1 + 1 + 4 + 4 + 4 + 4;
const CRC_LEN: usize = 4;
/// Largest COBS-encoded frame including the trailing delimiter; the decoder drops longer runs.
pub const MAX_WIRE_FRAME: usize = cobs_max(HEADER_LEN + MAX_PAYLOAD + CRC_LEN) + 1;

const CRC32: Crc<u32> = Crc::<u32>::new(&CRC_32_ISO_HDLC);

const fn cobs_max(n: usize) -> usize {
    // One overhead byte per started 254-byte block, at least one.
    n + n / 254 + 1
}

/// Frame kinds of the reliable layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrameKind {
    /// A segment of a message; `seq` numbers it, `ack`/`sack` piggyback the receiver state.
    Data = 1,
    /// Acknowledgement only (also used as keep-alive).
    Ack = 2,
    /// Opens a session: the receiver drops all link state and answers `SyncAck`.
    Sync = 3,
    SyncAck = 4,
    /// "I do not know your session": the peer restarted; the sender must resync.
    Reset = 5,
}

impl FrameKind {
    fn from_u8(b: u8) -> Option<FrameKind> {
        Some(match b {
            1 => FrameKind::Data,
            2 => FrameKind::Ack,
            3 => FrameKind::Sync,
            4 => FrameKind::SyncAck,
            5 => FrameKind::Reset,
            _ => return None,
        })
    }
}

/// Flag bit: this data segment ends a message.
pub const FLAG_FIN: u8 = 0x01;
/// Flag bit: this data frame carries one piece of segment `seq` (a retransmission split into smaller
/// frames for a noisy line); `sack` then holds `offset << 16 | segment length` instead of acks.
pub const FLAG_PART: u8 = 0x02;

/// One decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameKind,
    pub flags: u8,
    pub session: u32,
    pub seq: u32,
    /// Cumulative ack: the next sequence number the sender of this frame expects.
    pub ack: u32,
    /// Bit i set: sequence `ack + 1 + i` has been received out of order.
    pub sack: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn control(kind: FrameKind, session: u32, ack: u32, sack: u32) -> Frame {
        Frame {
            kind,
            flags: 0,
            session,
            seq: 0,
            ack,
            sack,
            payload: Vec::new(),
        }
    }

    /// Wire bytes: COBS-encoded header, payload and CRC, then the `0x00` delimiter.
    ///
    /// Panics if the payload exceeds [`MAX_PAYLOAD`]: that is a bug in the sender, not external input.
    pub fn encode(&self) -> Vec<u8> {
        assert!(
            self.payload.len() <= MAX_PAYLOAD,
            "frame payload {} > {MAX_PAYLOAD}",
            self.payload.len()
        );
        let mut raw = Vec::with_capacity(HEADER_LEN + self.payload.len() + CRC_LEN);
        raw.push(self.kind as u8);
        raw.push(self.flags);
        raw.extend_from_slice(&self.session.to_le_bytes());
        raw.extend_from_slice(&self.seq.to_le_bytes());
        raw.extend_from_slice(&self.ack.to_le_bytes());
        raw.extend_from_slice(&self.sack.to_le_bytes());
        raw.extend_from_slice(&self.payload);
        let crc = CRC32.checksum(&raw);
        raw.extend_from_slice(&crc.to_le_bytes());
        let mut out = vec![0u8; cobs_max(raw.len()) + 1];
        let n = cobs::encode(&raw, &mut out);
        out.truncate(n);
        out.push(0);
        out
    }

    /// Wire length of a data frame carrying `payload` bytes (an upper bound, exact for non-zero data).
    pub fn wire_len_bound(payload: usize) -> usize {
        cobs_max(HEADER_LEN + payload + CRC_LEN) + 1
    }

    /// Decode one COBS block (without its delimiter).
    pub fn decode(encoded: &[u8]) -> Result<Frame, FrameError> {
        if encoded.len() + 1 > MAX_WIRE_FRAME {
            return Err(FrameError::Oversize {
                len: encoded.len() + 1,
                max: MAX_WIRE_FRAME,
            });
        }
        let mut raw = vec![0u8; encoded.len()];
        let n =
            cobs::decode(encoded, &mut raw).map_err(|_| FrameError::Cobs { len: encoded.len() })?;
        raw.truncate(n);
        if raw.len() < HEADER_LEN + CRC_LEN {
            return Err(FrameError::TooShort {
                len: raw.len(),
                min: HEADER_LEN + CRC_LEN,
            });
        }
        let (body, crc_bytes) = raw.split_at(raw.len() - CRC_LEN);
        let got = u32::from_le_bytes([crc_bytes[0], crc_bytes[1], crc_bytes[2], crc_bytes[3]]);
        let want = CRC32.checksum(body);
        if got != want {
            return Err(FrameError::Crc {
                computed: want,
                received: got,
            });
        }
        let kind = FrameKind::from_u8(body[0]).ok_or(FrameError::UnknownKind(body[0]))?;
        let word = |i: usize| u32::from_le_bytes([body[i], body[i + 1], body[i + 2], body[i + 3]]);
        let payload = body[HEADER_LEN..].to_vec();
        if payload.len() > MAX_PAYLOAD {
            return Err(FrameError::Oversize {
                len: payload.len(),
                max: MAX_PAYLOAD,
            });
        }
        Ok(Frame {
            kind,
            flags: body[1],
            session: word(2),
            seq: word(6),
            ack: word(10),
            sack: word(14),
            payload,
        })
    }
}

/// Why a run of bytes between delimiters was not a frame. Each one is counted by the link and the
/// stream resyncs at the next `0x00`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the maximum of {max} (missing delimiter or garbage)")]
    Oversize { len: usize, max: usize },
    #[error("invalid COBS encoding in a {len}-byte frame")]
    Cobs { len: usize },
    #[error("frame of {len} bytes is shorter than header + CRC ({min} bytes)")]
    TooShort { len: usize, min: usize },
    #[error("CRC mismatch: computed {computed:#010x}, frame says {received:#010x}")]
    Crc { computed: u32, received: u32 },
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
}

/// Incremental decoder: feed it bytes as they arrive, get frames (or errors) at each delimiter.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// True while skipping an oversize run until the next delimiter.
    discarding: bool,
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes held for an incomplete frame.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Feed bytes; `on_frame` is called once per delimited run (empty runs are ignored).
    pub fn feed(&mut self, data: &[u8], mut on_frame: impl FnMut(Result<Frame, FrameError>)) {
        for chunk in data.split_inclusive(|&b| b == 0) {
            let ends = chunk.last() == Some(&0);
            let body = if ends {
                &chunk[..chunk.len() - 1]
            } else {
                chunk
            };
            if !self.discarding {
                if self.buf.len() + body.len() + 1 > MAX_WIRE_FRAME {
                    on_frame(Err(FrameError::Oversize {
                        len: self.buf.len() + body.len() + 1,
                        max: MAX_WIRE_FRAME,
                    }));
                    self.buf.clear();
                    self.discarding = true;
                } else {
                    self.buf.extend_from_slice(body);
                }
            }
            if ends {
                if !self.discarding && !self.buf.is_empty() {
                    on_frame(Frame::decode(&self.buf));
                }
                self.buf.clear();
                self.discarding = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn kind() -> impl Strategy<Value = FrameKind> {
        prop_oneof![
            Just(FrameKind::Data),
            Just(FrameKind::Ack),
            Just(FrameKind::Sync),
            Just(FrameKind::SyncAck),
            Just(FrameKind::Reset)
        ]
    }

    prop_compose! {
        fn frame()(kind in kind(), flags: u8, session: u32, seq: u32, ack: u32, sack: u32,
                   payload in proptest::collection::vec(any::<u8>(), 0..600)) -> Frame {
            Frame { kind, flags, session, seq, ack, sack, payload }
        }
    }

    proptest! {
        #[test]
        fn frames_round_trip(f in frame()) {
            let wire = f.encode();
            prop_assert_eq!(wire.iter().filter(|&&b| b == 0).count(), 1);
            prop_assert!(wire.len() <= Frame::wire_len_bound(f.payload.len()));
            let mut got = Vec::new();
            FrameDecoder::new().feed(&wire, |r| got.push(r));
            prop_assert_eq!(got, vec![Ok(f)]);
        }

        #[test]
        fn split_stream_round_trips(fs in proptest::collection::vec(frame(), 1..6), cut in 1usize..97) {
            let wire: Vec<u8> = fs.iter().flat_map(|f| f.encode()).collect();
            let mut dec = FrameDecoder::new();
            let mut got = Vec::new();
            for c in wire.chunks(cut) {
                dec.feed(c, |r| got.push(r.unwrap()));
            }
            prop_assert_eq!(got, fs);
        }

        #[test]
        fn one_flipped_byte_is_detected(f in frame(), pos in any::<prop::sample::Index>(), x in 1u8..=255) {
            let mut wire = f.encode();
            let i = pos.index(wire.len() - 1);
            wire[i] ^= x;
            let mut got = Vec::new();
            FrameDecoder::new().feed(&wire, |r| got.push(r));
            // A flipped byte may become a delimiter (two runs) but never yields a wrong frame.
            for g in got.into_iter().flatten() {
                prop_assert_eq!(g, f.clone());
            }
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..4000)) {
            let mut dec = FrameDecoder::new();
            dec.feed(&bytes, |_| {});
            let _ = Frame::decode(&bytes);
        }
    }

    #[test]
    fn resyncs_after_garbage_and_reports_it() {
        let f = Frame::control(FrameKind::Ack, 7, 3, 0b101);
        let mut stream = vec![1, 2, 3, 0];
        stream.extend(f.encode());
        let mut got = Vec::new();
        FrameDecoder::new().feed(&stream, |r| got.push(r));
        assert_eq!(got.len(), 2);
        assert!(got[0].is_err());
        assert_eq!(got[1], Ok(f));
    }

    #[test]
    fn oversize_run_is_dropped_then_recovers() {
        let mut dec = FrameDecoder::new();
        let mut errs = 0;
        let junk = vec![0x55u8; MAX_WIRE_FRAME + 10];
        dec.feed(&junk, |r| {
            assert!(matches!(r, Err(FrameError::Oversize { .. })));
            errs += 1;
        });
        assert_eq!(errs, 1);
        assert!(dec.pending() < MAX_WIRE_FRAME);
        let f = Frame {
            kind: FrameKind::Data,
            flags: FLAG_FIN,
            session: 1,
            seq: 9,
            ack: 0,
            sack: 0,
            payload: vec![0; 40],
        };
        let mut wire = vec![0u8];
        wire.extend(f.encode());
        let mut got = Vec::new();
        dec.feed(&wire, |r| got.push(r));
        assert_eq!(got, vec![Ok(f)]);
    }

    #[test]
    fn full_segment_overhead_is_small() {
        let f = Frame {
            kind: FrameKind::Data,
            flags: 0,
            session: 1,
            seq: 1,
            ack: 0,
            sack: 0,
            payload: vec![7; MAX_PAYLOAD],
        };
        let w = f.encode().len();
        let eff = MAX_PAYLOAD as f64 / w as f64;
        assert!(eff > 0.99, "efficiency {eff}");
    }
}
