//! The event contract's byte encoding: `decode(encode(b)) == b` for every byte string,
//! `for_terminal` never lets a control character through, and `decode` of any text
//! (a hostile approver or a damaged file) returns bytes or `None`, never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;
use monitor::event::escape::{decode, encode, for_terminal};

fuzz_target!(|data: &[u8]| {
    let text = encode(data);
    assert_eq!(
        decode(&text).as_deref(),
        Some(data),
        "round trip of {data:?}"
    );
    let shown = for_terminal(data);
    assert!(
        !shown.chars().any(char::is_control),
        "control character on the terminal: {shown:?}"
    );
    if let Ok(s) = std::str::from_utf8(data)
        && let Some(bytes) = decode(s)
    {
        assert_eq!(decode(&encode(&bytes)), Some(bytes));
    }
});
