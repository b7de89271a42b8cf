//! The memcached binary parser on arbitrary bytes: no panic, progress on every result, never
//! more than the buffer, and a refused body is swallowed rather than buffered.
#![no_main]

use k2hdkc_proto::memcached::binary::{self, BinParsed};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    for _ in 0..=data.len() {
        match binary::parse(rest, 4096) {
            BinParsed::Incomplete => break,
            BinParsed::Done { consumed, .. } => {
                assert!(consumed >= binary::HEADER_LEN && consumed <= rest.len());
                rest = &rest[consumed..];
            }
            BinParsed::Invalid { consumed, swallow, close, .. } => {
                assert!(consumed >= 1 && consumed <= rest.len());
                if close {
                    break;
                }
                rest = &rest[consumed..];
                rest = &rest[(swallow as usize).min(rest.len())..];
            }
            BinParsed::BadMagic { .. } => break,
        }
    }
    // The client-side reply parser must be as robust.
    let _ = binary::parse_response(data, 4096);
});
