//! The check every decoder target makes: decoding never panics, always
//! advances, stays inside its buffer and its maximum, and gives the same
//! frames whether the bytes come all at once or one at a time.

use session_core::Framing;

pub fn check(framing: Framing, data: &[u8]) {
    let Some((&knob, input)) = data.split_first() else {
        return;
    };
    let max = 1 + usize::from(knob) * 4;
    let whole = decode_all(framing, input, max, input.len().max(1));
    let trickled = decode_all(framing, input, max, 1);
    if framing != Framing::Raw {
        // Raw framing is defined by read sizes; the others must not care.
        assert_eq!(whole, trickled);
    }
}

/// Decodes `input` fed `step` bytes at a time into a growing buffer, as the
/// engine does; returns the frames and whether it ended on an error.
fn decode_all(framing: Framing, input: &[u8], max: usize, step: usize) -> (Vec<Vec<u8>>, bool) {
    let mut frames = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    for chunk in input.chunks(step) {
        buf.extend_from_slice(chunk);
        loop {
            match framing.decode(&buf, max) {
                Ok(Some(d)) => {
                    assert!(d.consumed > 0 && d.consumed <= buf.len());
                    assert!(d.payload.end <= d.consumed && d.payload.len() <= max);
                    frames.push(buf[d.payload].to_vec());
                    buf.drain(..d.consumed);
                }
                Ok(None) => break,
                Err(_) => return (frames, true),
            }
        }
        // What waits for more bytes is bounded by the maximum frame.
        assert!(buf.len() <= max + framing.overhead() + 1 + step);
    }
    (frames, false)
}
