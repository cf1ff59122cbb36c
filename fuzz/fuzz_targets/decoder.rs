//! Any bytes as eBPF bytecode: strict decoding never panics; what decodes re-encodes byte for
//! byte and disassembles.
#![no_main]

use libfuzzer_sys::fuzz_target;
use polc::asm::{decode_program, encode_program, Insn};

fuzz_target!(|data: &[u8]| {
    let Ok(decoded) = decode_program(data) else { return };
    let insns: Vec<Insn> = decoded.into_iter().map(|(_, insn)| insn).collect();
    match encode_program(&insns) {
        Ok(bytes) => assert_eq!(bytes, data, "decode -> encode is not the identity"),
        Err(e) => panic!("decoded instructions do not encode: {e}"),
    }
    for insn in &insns {
        let _ = insn.to_string();
    }
});
