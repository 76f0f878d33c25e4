//! Board agent: serves the protocol, runs training steps on an accelerator backend, reads power rails.
//!
//! - [`agent::serve`]: the agent loop (`e2train agent --port PATH` on the board, a thread for `sim`,
//!   a child process for `pty`). It builds the engine with the factory it is given, answers each
//!   request of the current host session, never applies the same batch `seq` twice in a row (a
//!   repeated request gets the cached answer) and attaches power samples to step results.
//! - [`remote::RemoteEngine`]: the host's `StepEngine` for a board behind a link, with handshake checks
//!   (protocol version, bitstream hash), chunked checkpoints and evaluation, and recovery by
//!   reconnect + checkpoint upload + replay, so an interrupted run ends bit-identical to a clean one.
//! - [`power`]: power monitors (UCD90120A via hwmon, read-only; none in simulation).
//! - [`regs`]: PL register backends (`/dev/mem` or UIO mmap; memory-backed for tests) and a CSR driver.
//! - [`toy`]: a small deterministic engine for link tests and the `e2t-test-agent` binary.
//!
//! Invariant: the agent holds no host-side policy (schedule, SMD); everything it does is a function
//! of the configuration and the sequence of requests, which is what makes replay exact.

pub mod agent;
pub mod power;
pub mod regs;
pub mod remote;
pub mod toy;

pub use agent::{AgentError, EngineFactory, serve, serve_link};
pub use power::{HwmonUcd9000, NoPower, PowerMonitor};
pub use remote::{
    BoardSpec, ConnectOptions, RemoteEngine, RemoteError, RemoteMonitor, RemoteOptions, connect,
};
