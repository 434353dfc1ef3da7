//! Message decoding (`raftkit_core::codec::decode_message`) on arbitrary bytes, then
//! `Message::validate`: neither may panic or allocate without bound, and whatever decodes must
//! encode back to a value that decodes to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use raftkit_core::codec;

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = codec::decode_message(data) else { return };
    let _ = msg.validate();
    let _ = (msg.kind(), msg.size_hint());
    let bytes = codec::encode_message(&msg).expect("a decoded message encodes");
    assert_eq!(codec::decode_message(&bytes).as_ref(), Ok(&msg), "round trip");
});
