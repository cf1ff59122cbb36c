//! Any text as a Calico selector: parsing never panics, and what parses prints to a canonical
//! form that parses back to the same selector and prints identically.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let Ok(selector) = polc::selector::parse(text) else { return };
    let printed = selector.to_string();
    let reparsed = match polc::selector::parse(&printed) {
        Ok(s) => s,
        Err(e) => panic!("printed form {printed:?} of {text:?} does not parse: {e}"),
    };
    assert_eq!(reparsed.to_string(), printed, "print is not canonical for {text:?}");
});
