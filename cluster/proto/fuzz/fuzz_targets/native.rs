//! The native protocol on arbitrary bytes: frames, request fields and reply fields never
//! panic; a frame is consumed exactly; a decoded request re-encodes to fields that decode to
//! the same request.
#![no_main]

use k2hdkc_proto::native::{self as wire, Args, FrameParse, Reply};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    for _ in 0..=data.len() {
        match wire::parse_frame(rest, wire::MAGIC_REQUEST, 1 << 16) {
            FrameParse::Incomplete | FrameParse::BadMagic(_) => break,
            FrameParse::TooLarge { consumed, skip, header } => {
                assert!(consumed >= wire::HEADER_LEN && consumed <= rest.len());
                assert_eq!(consumed + skip, wire::HEADER_LEN + header.body_len as usize);
                rest = &rest[consumed..];
            }
            FrameParse::Frame { header, body } => {
                assert_eq!(body.len(), header.body_len as usize);
                if let Ok(a) = Args::decode(body) {
                    let mut again = Vec::new();
                    a.encode(&mut again);
                    assert_eq!(Args::decode(&again).as_ref(), Ok(&a));
                }
                rest = &rest[wire::HEADER_LEN + body.len()..];
            }
        }
    }
    // The same bytes as a reply body.
    if let Some(h) = wire::Header::parse(data) {
        let _ = Reply::decode(&h, &data[wire::HEADER_LEN..]);
    }
});
