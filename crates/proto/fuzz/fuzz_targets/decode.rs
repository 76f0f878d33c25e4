//! Fuzz the receive path: arbitrary bytes through the frame decoder (in the chunking the first byte
//! picks) and every payload through the message decoder. Any panic is a finding.
#![no_main]

use e2t_proto::{Frame, FrameDecoder, decode_msg, encode_msg};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (chunk, rest) = match data.split_first() {
        Some((c, r)) => (usize::from(*c).max(1), r),
        None => return,
    };
    let mut dec = FrameDecoder::new();
    for part in rest.chunks(chunk) {
        dec.feed(part, |r| {
            if let Ok(f) = r {
                // A frame that decoded must re-encode to bytes that decode to the same frame.
                let again = Frame::decode(&f.encode()[..f.encode().len() - 1])
                    .expect("re-encoded frame decodes");
                assert_eq!(again, f);
                let _ = decode_msg(&f.payload);
            }
        });
    }
    let _ = Frame::decode(rest);
    if let Ok(m) = decode_msg(rest) {
        // Whatever decodes must encode again (round trip through the wire format).
        let _ = encode_msg(&m);
    }
});
