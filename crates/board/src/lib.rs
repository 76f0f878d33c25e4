//! Board agent: serves the protocol, runs training steps on an accelerator backend, reads power rails.
