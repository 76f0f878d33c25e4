//! Board link protocol: versioned messages, COBS framing with CRC-32, compact binary encoding. No I/O.
