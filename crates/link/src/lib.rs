//! Link transports (serial, pseudo-terminal, in-process), reliable delivery and fault injection.
//!
//! - [`Transport`]: a byte stream with timed reads and writes. Implementations: [`InProc`] (a pair of
//!   channels), [`FdTransport`] (a pty master or a serial port opened through `serialport`),
//!   [`PtyChild`] (a pty whose other end is an agent process this side spawned), and the wrappers
//!   [`Throttled`] (emulates a baud rate) and [`Faulty`] (drops, corrupts, duplicates and delays bytes
//!   with a seeded RNG).
//! - [`Link`]: reliable, ordered, exactly-once delivery of messages (byte vectors) over any transport,
//!   with e2t-proto framing: selective-repeat ARQ with cumulative + selective acks, retransmission on
//!   timeout and on holes reported by the peer, duplicate suppression, a window of frames in flight,
//!   adaptive segment size (shrinks when frames are lost, grows back when clean), keep-alives and a
//!   clean error when the peer is silent past a timeout. One worker thread per link owns the transport.
//!
//! Invariants: within one session each message is delivered once, whole and in order, or the link
//! reports an error; frames of an older session are never delivered into a newer one.

mod fault;
mod reliable;
mod transport;

pub use fault::{FaultConfig, Faulty};
pub use reliable::{Link, LinkConfig, LinkError, LinkStats, Received};
pub use transport::{
    FdTransport, InProc, PtyChild, Throttled, Transport, in_proc_pair, open_pty, open_serial,
};
