//! The ring-buffer record decoder: any bytes the kernel side could hand over (or a
//! corrupted record) decode to a record or an error, never a panic or an out-of-bounds
//! read, and every path or argument decoded lies inside the record.
#![no_main]
use libfuzzer_sys::fuzz_target;
use monitor::kernel::decode::{Record, decode};

fuzz_target!(|data: &[u8]| {
    let Ok(record) = decode(data) else {
        return;
    };
    let _ = format!("{record:?}");
    let _ = record.header();
    match &record {
        Record::Syscall(s) => assert!(s.path1.len() + s.path2.len() <= data.len()),
        Record::Exec { filename, .. } => assert!(filename.len() <= data.len()),
        Record::ExecArgs { argv, .. } => {
            assert!(argv.iter().map(Vec::len).sum::<usize>() <= data.len())
        }
        _ => {}
    }
});
