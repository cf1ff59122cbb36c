//! Any bytes as a policy file: the frontend (and lowering what it accepts) never panics, and
//! every error is one line.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match polc::frontend::load_str("fuzz.yaml", text) {
        Ok(cluster) => {
            let _ = polc::lower::lower(&cluster);
        }
        Err(e) => {
            assert_eq!(e.exit_code(), 2, "frontend error not marked as bad input: {e}");
            assert!(!e.to_string().contains('\n'), "multi-line error: {e}");
        }
    }
});
