//! Link transports (serial, pseudo-terminal, in-process), reliable delivery and fault injection.
