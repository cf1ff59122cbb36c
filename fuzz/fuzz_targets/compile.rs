//! End to end: a fuzzed cluster -> frontend -> lower -> compile (-O0 and -O2) -> each program
//! under rbpf on fuzzer-chosen flows; verdict and deciding rule must equal the evaluator's.
#![no_main]

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(yaml) = polc_fuzz::cluster_yaml(&mut u) else { return };
    polc_fuzz::check_compiled_matches_evaluator(&yaml, &mut u);
});
