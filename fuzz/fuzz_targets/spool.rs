//! The uplink spool's stored entries (JSON in the daemon's store, a hex-encoded protobuf
//! inside): damaged bytes decode to an entry or nothing, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use monitor::uplink::spool::SpoolEntry;

fuzz_target!(|data: &[u8]| {
    if let Ok(entry) = serde_json::from_slice::<SpoolEntry>(data) {
        let _ = entry.submit_request();
        let _ = entry.report_request();
        let back = serde_json::to_vec(&entry).expect("an entry serializes");
        assert_eq!(
            serde_json::from_slice::<SpoolEntry>(&back).ok().as_ref(),
            Some(&entry)
        );
    }
    // The hex-encoded request alone, as a damaged store could hold it.
    let entry = SpoolEntry::Submit {
        host_request_id: 1,
        request: String::from_utf8_lossy(data).into_owned(),
    };
    let _ = entry.submit_request();
});
