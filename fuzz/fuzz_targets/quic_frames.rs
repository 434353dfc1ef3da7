//! The QUIC adapter's stream parser (header, length-prefixed frames, frame decoding) on
//! arbitrary bytes, through the `--cfg fuzzing` hook `raftkit_quic::fuzzing::read_stream`.
//! The first input byte picks the frame limit, so both the limit check and large frames run.
#![no_main]

use libfuzzer_sys::fuzz_target;
use raftkit_quic::fuzzing::read_stream;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, stream)) = data.split_first() else { return };
    let limit = match pick % 4 {
        0 => raftkit_quic::DEFAULT_MAX_FRAME_BYTES,
        1 => 64,
        2 => 1 + usize::from(pick),
        _ => u32::MAX as usize,
    };
    if let Ok(messages) = read_stream(stream, limit) {
        for m in messages {
            let _ = m.validate();
        }
    }
});
