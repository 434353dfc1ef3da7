//! Record decoding of the durable stores (`raftkit::store::unseal`) for every record kind the
//! redb and RocksDB stores and the snapshot store read: entries, the hard state, the purged id
//! (a `LogId`) and snapshot metadata.
//!
//! Input: a kind byte, a mode byte, then the record. Mode 0 feeds the record as it is (so the
//! checksum and length checks run); otherwise the target seals the body with a correct CRC first,
//! so the fuzzer reaches the decoder without having to forge CRC-32s. Whatever decodes must seal
//! and unseal back to itself.
#![no_main]

use std::fmt::Debug;

use libfuzzer_sys::fuzz_target;
use raftkit::store::{seal, unseal};
use raftkit_core::{Entry, HardState, LogId, SnapshotMeta};
use serde::Serialize;
use serde::de::DeserializeOwned;

fn check<T: Serialize + DeserializeOwned + PartialEq + Debug>(record: &[u8]) {
    if let Ok(value) = unseal::<T>(record, &"fuzz") {
        let again = seal(&value).expect("a decoded record seals");
        assert_eq!(unseal::<T>(&again, &"fuzz").ok().as_ref(), Some(&value), "round trip");
    }
}

fuzz_target!(|data: &[u8]| {
    let [kind, mode, body @ ..] = data else { return };
    let sealed;
    let record = if *mode == 0 {
        body
    } else {
        let mut r = crc32fast::hash(body).to_le_bytes().to_vec();
        r.extend_from_slice(body);
        sealed = r;
        &sealed[..]
    };
    match kind % 4 {
        0 => check::<Entry>(record),
        1 => check::<HardState>(record),
        2 => check::<LogId>(record),
        _ => check::<SnapshotMeta>(record),
    }
});
