#![no_main]
//! Fuzzes the WebSocket decoder: decoding never panics, always advances,
//! stays inside its buffer and its maximum, and gives the same messages and
//! the same error whether the bytes come all at once or one at a time (as
//! the engine feeds it, keeping a partial frame).

use libfuzzer_sys::fuzz_target;
use session_core::{WebSocketDecoder, WebSocketError, WebSocketEvent};

fuzz_target!(|data: &[u8]| {
    let Some((&knob, input)) = data.split_first() else {
        return;
    };
    // The low bit picks the side (a server reads masked frames), the rest
    // the maximum message length.
    let server = knob & 1 == 1;
    let max = 1 + usize::from(knob >> 1) * 8;
    let whole = decode_all(server, input, max, input.len().max(1));
    let trickled = decode_all(server, input, max, 1);
    assert_eq!(whole, trickled);
});

/// What a decoder made of the input: each event, as owned text, and the
/// error it stopped at.
type Outcome = (Vec<String>, Option<WebSocketError>);

fn decode_all(server: bool, input: &[u8], max: usize, step: usize) -> Outcome {
    let mut decoder = WebSocketDecoder::new(server, max);
    let mut events = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    for chunk in input.chunks(step) {
        buf.extend_from_slice(chunk);
        loop {
            let len = buf.len();
            match decoder.decode(&mut buf) {
                Ok(Some((used, event))) => {
                    assert!(used > 0 && used <= len);
                    if let Some(event) = event {
                        if let WebSocketEvent::Message(_, message) = &event {
                            assert!(message.len() <= max);
                        }
                        events.push(format!("{event:?}"));
                    }
                    buf.drain(..used);
                }
                Ok(None) => {
                    // What waits is part of one frame: its header and a
                    // payload within the maximum (125 for a control frame).
                    assert!(buf.len() < 14 + max.max(125));
                    break;
                }
                Err(e) => return (events, Some(e)),
            }
        }
        decoder.settle();
    }
    (events, None)
}
