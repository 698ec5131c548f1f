//! Kafka request frames: header, bounds check and decode, as the broker
//! runs them before serving a request.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ringbroker::server::kafka::decode_request(bytes::Bytes::copy_from_slice(data));
});
