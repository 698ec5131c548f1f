//! The frame decoder and every request and response header decoder.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringbroker::protocol::wire::{self, Request, Response};

fuzz_target!(|data: &[u8]| {
    if let Some(prefix) = data.get(..4) {
        let _ = wire::frame_len(prefix.try_into().expect("4 bytes"), 1 << 20);
    }
    let body = bytes::BytesMut::from(data);
    if let Ok((_, header, _)) = wire::split_frame(body) {
        let _ = wire::decode_header::<Request>(&header);
        let _ = wire::decode_header::<Response>(&header);
    }
    let _ = wire::decode_header::<Request>(data);
    let _ = wire::decode_header::<Response>(data);
});
