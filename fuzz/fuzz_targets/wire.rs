//! The approval service's checks of a Submit from a host: any protobuf bytes are either
//! refused with a status or become a stored request whose text fields pass the same
//! checks, never a panic.
#![no_main]
use confgate_proto::v1 as pb;
use libfuzzer_sys::fuzz_target;
use monitor::approver::wire::{check_text, new_request};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let _ = check_text("fuzz", &String::from_utf8_lossy(data), 4096);
    let Ok(req) = pb::SubmitRequest::decode(data) else {
        return;
    };
    let _ = new_request(req, "fuzz-host", 1_700_000_000_000, 60_000);
});
