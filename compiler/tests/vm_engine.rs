//! The vm engine end to end: programs built with `polc::asm`, run under rbpf with mocked maps
//! and helpers, checked against what the kernel would do.

use polc::asm::{helper, AluOp, Asm, Cond, Insn, Reg, Size};
use polc::vm::{
    self, lpm_key, Exit, MapDef, MapKind, Maps, SkBuff, VmError, VmInput, VmOutput, BPF_NOEXIST,
};

const HASH: u32 = 1;
const ARRAY: u32 = 2;
const PROGS: u32 = 3;
const PERCPU: u32 = 4;
const LPM4: u32 = 5;
const LPM6: u32 = 6;

fn build(f: impl FnOnce(&mut Asm)) -> Vec<u8> {
    let mut a = Asm::new();
    f(&mut a);
    a.assemble().expect("test program assembles").try_to_bytes().expect("encodes")
}

fn def(name: &str, kind: MapKind, key_size: u32, value_size: u32, max_entries: u32) -> MapDef {
    MapDef { name: name.into(), kind, key_size, value_size, max_entries }
}

fn standard_maps() -> Maps {
    let mut maps = Maps::new();
    maps.add(HASH, def("hash", MapKind::Hash, 4, 8, 2)).unwrap();
    maps.add(ARRAY, def("array", MapKind::Array, 4, 8, 4)).unwrap();
    maps.add(PROGS, def("progs", MapKind::ProgArray, 4, 4, 8)).unwrap();
    maps
}

fn run(program: &[u8], maps: Maps) -> Result<VmOutput, VmError> {
    vm::run(VmInput::new(program), maps)
}

fn returned(out: &VmOutput) -> u64 {
    match out.exit {
        Exit::Return(v) => v,
        other => panic!("expected a return, got {other:?}"),
    }
}

fn neg(errno: i32) -> u64 {
    (-i64::from(errno)) as u64
}

/// Stores `key` (u32) at fp-4 and `value` (u64) at fp-16, points r2/r3 at them.
fn key_value_on_stack(a: &mut Asm, key: i32, value: i32) {
    a.push(Insn::st(Size::W, Reg::FP, -4, key));
    a.push(Insn::st(Size::DW, Reg::FP, -16, value));
    a.push(Insn::mov64(Reg::R2, Reg::FP));
    a.push(Insn::alu64(AluOp::Add, Reg::R2, -4));
    a.push(Insn::mov64(Reg::R3, Reg::FP));
    a.push(Insn::alu64(AluOp::Add, Reg::R3, -16));
}

/// `map_update_elem(map, &key, &value, flags)`; leaves the helper result in r0.
fn update(a: &mut Asm, map: u32, key: i32, value: i32, flags: i32) {
    key_value_on_stack(a, key, value);
    a.push(Insn::ld_map_fd(Reg::R1, map));
    a.push(Insn::mov64(Reg::R4, flags));
    a.push(Insn::call(helper::MAP_UPDATE_ELEM));
}

/// `r0 = map_lookup_elem(map, &key)`.
fn lookup(a: &mut Asm, map: u32, key: i32) {
    a.push(Insn::st(Size::W, Reg::FP, -4, key));
    a.push(Insn::mov64(Reg::R2, Reg::FP));
    a.push(Insn::alu64(AluOp::Add, Reg::R2, -4));
    a.push(Insn::ld_map_fd(Reg::R1, map));
    a.push(Insn::call(helper::MAP_LOOKUP_ELEM));
}

#[test]
fn returns_r0() {
    let p = build(|a| {
        a.push(Insn::mov64(Reg::R0, 7));
        a.push(Insn::alu64(AluOp::Mul, Reg::R0, 6));
        a.push(Insn::exit());
    });
    let out = run(&p, Maps::new()).unwrap();
    assert_eq!(out.exit, Exit::Return(42));
    assert_eq!(out.return_value, 42);
    assert!(out.helper_calls.is_empty());
}

#[test]
fn hash_update_then_lookup_from_program_is_visible_afterwards() {
    let p = build(|a| {
        update(a, HASH, 7, 0x1234, 0);
        lookup(a, HASH, 7);
        let missing = a.label();
        a.jump_if(Cond::Eq, Reg::R0, 0, missing);
        a.push(Insn::ldx(Size::DW, Reg::R0, Reg::R0, 0));
        a.push(Insn::exit());
        a.bind(missing);
        a.push(Insn::mov64(Reg::R0, 1));
        a.push(Insn::exit());
    });
    let out = run(&p, standard_maps()).unwrap();
    assert_eq!(returned(&out), 0x1234);
    assert_eq!(
        out.maps.entries(HASH),
        vec![(7u32.to_ne_bytes().to_vec(), 0x1234u64.to_ne_bytes().to_vec())]
    );
    let ids: Vec<u32> = out.helper_calls.iter().map(|c| c.0).collect();
    assert_eq!(ids, vec![2, 1]);
}

#[test]
fn writes_through_a_looked_up_array_value_land_in_the_map() {
    let p = build(|a| {
        lookup(a, ARRAY, 1);
        let missing = a.label();
        a.jump_if(Cond::Eq, Reg::R0, 0, missing);
        a.push(Insn::st(Size::DW, Reg::R0, 0, 99));
        // Read-modify-write: value += 1.
        a.push(Insn::ldx(Size::DW, Reg::R1, Reg::R0, 0));
        a.push(Insn::alu64(AluOp::Add, Reg::R1, 1));
        a.push(Insn::stx(Size::DW, Reg::R0, 0, Reg::R1));
        a.push(Insn::mov64(Reg::R0, 0));
        a.push(Insn::exit());
        a.bind(missing);
        a.push(Insn::mov64(Reg::R0, 1));
        a.push(Insn::exit());
    });
    let out = run(&p, standard_maps()).unwrap();
    assert_eq!(returned(&out), 0);
    assert_eq!(out.maps.lookup(ARRAY, &1u32.to_ne_bytes()), Some(100u64.to_ne_bytes().to_vec()));
    assert_eq!(out.maps.lookup(ARRAY, &0u32.to_ne_bytes()), Some(vec![0; 8]));

    // Index 4 is past max_entries: lookup gives NULL.
    let p = build(|a| {
        lookup(a, ARRAY, 4);
        a.push(Insn::exit());
    });
    assert_eq!(returned(&run(&p, standard_maps()).unwrap()), 0);
}

const TABLE: u32 = 7;

#[test]
fn map_value_addresses_read_and_write_the_one_value() {
    let mut maps = standard_maps();
    maps.add(TABLE, def("table", MapKind::Array, 4, 64, 1)).unwrap();
    let mut value = vec![0u8; 64];
    value[40..48].copy_from_slice(&7u64.to_ne_bytes());
    maps.update(TABLE, &0u32.to_ne_bytes(), &value).unwrap();
    // r0 = table[40..48] + 1, written back at 8..16 through a second address.
    let p = build(|a| {
        a.push(Insn::ld_map_value(Reg::R1, TABLE, 32));
        a.push(Insn::ldx(Size::DW, Reg::R0, Reg::R1, 8));
        a.push(Insn::alu64(AluOp::Add, Reg::R0, 1));
        a.push(Insn::ld_map_value(Reg::R2, TABLE, 0));
        a.push(Insn::stx(Size::DW, Reg::R2, 8, Reg::R0));
        a.push(Insn::exit());
    });
    let out = run(&p, maps.clone()).unwrap();
    assert_eq!(returned(&out), 8);
    let after = out.maps.lookup(TABLE, &0u32.to_ne_bytes()).unwrap();
    assert_eq!(after[8..16], 8u64.to_ne_bytes());

    // The kernel's rules: an offset inside the value, an array with one entry.
    let past = build(|a| {
        a.push(Insn::ld_map_value(Reg::R0, TABLE, 64));
        a.push(Insn::exit());
    });
    match run(&past, maps.clone()) {
        Err(VmError::Rejected { insn: Some(0), message }) => {
            assert!(message.contains("offset"), "{message}")
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    let many = build(|a| {
        a.push(Insn::ld_map_value(Reg::R0, ARRAY, 0));
        a.push(Insn::exit());
    });
    assert!(matches!(run(&many, maps.clone()), Err(VmError::Rejected { .. })));
    let unknown = build(|a| {
        a.push(Insn::ld_map_value(Reg::R0, 99, 0));
        a.push(Insn::exit());
    });
    assert!(matches!(run(&unknown, maps), Err(VmError::UnknownMap(99))));
}

#[test]
fn percpu_array_program_sees_cpu0_only() {
    let mut maps = Maps::with_cpus(4).unwrap();
    maps.add(PERCPU, def("scratch", MapKind::PerCpuArray, 4, 8, 1)).unwrap();
    let key = 0u32.to_ne_bytes();
    let per_cpu: Vec<Vec<u8>> = (1..=4u64).map(|v| (v * 10).to_ne_bytes().to_vec()).collect();
    maps.update_percpu(PERCPU, &key, &per_cpu).unwrap();
    let p = build(|a| {
        lookup(a, PERCPU, 0);
        let missing = a.label();
        a.jump_if(Cond::Eq, Reg::R0, 0, missing);
        a.push(Insn::ldx(Size::DW, Reg::R1, Reg::R0, 0));
        a.push(Insn::alu64(AluOp::Add, Reg::R1, 5));
        a.push(Insn::stx(Size::DW, Reg::R0, 0, Reg::R1));
        a.push(Insn::call(helper::GET_SMP_PROCESSOR_ID));
        a.push(Insn::exit());
        a.bind(missing);
        a.push(Insn::mov64(Reg::R0, 99));
        a.push(Insn::exit());
    });
    let out = run(&p, maps).unwrap();
    assert_eq!(returned(&out), 0, "runs on CPU 0");
    let after = out.maps.lookup_percpu(PERCPU, &key).unwrap();
    let values: Vec<u64> =
        after.iter().map(|v| u64::from_ne_bytes(v.as_slice().try_into().unwrap())).collect();
    assert_eq!(values, vec![15, 20, 30, 40]);
}

/// A program that looks up `[prefixlen][set_id BE][address]` in an LPM map and returns the
/// matching value's first byte, or 0xff. The address comes from the packet at `addr_offset`.
fn lpm_program(map: u32, set_id: u32, addr_len: i32, addr_offset: i32) -> Vec<u8> {
    let key_at = -(8 + addr_len) as i16;
    build(|a| {
        a.push(Insn::mov64(Reg::R6, Reg::R1));
        a.push(Insn::st(Size::W, Reg::FP, key_at, 32 + 8 * addr_len));
        a.push(Insn::st(Size::W, Reg::FP, key_at + 4, i32::from_ne_bytes(set_id.to_be_bytes())));
        // skb_load_bytes(ctx, addr_offset, fp + key_at + 8, addr_len)
        a.push(Insn::mov64(Reg::R1, Reg::R6));
        a.push(Insn::mov64(Reg::R2, addr_offset));
        a.push(Insn::mov64(Reg::R3, Reg::FP));
        a.push(Insn::alu64(AluOp::Add, Reg::R3, i32::from(key_at) + 8));
        a.push(Insn::mov64(Reg::R4, addr_len));
        a.push(Insn::call(helper::SKB_LOAD_BYTES));
        let fail = a.label();
        a.jump_if(Cond::Ne, Reg::R0, 0, fail);
        a.push(Insn::ld_map_fd(Reg::R1, map));
        a.push(Insn::mov64(Reg::R2, Reg::FP));
        a.push(Insn::alu64(AluOp::Add, Reg::R2, i32::from(key_at)));
        a.push(Insn::call(helper::MAP_LOOKUP_ELEM));
        a.jump_if(Cond::Eq, Reg::R0, 0, fail);
        a.push(Insn::ldx(Size::B, Reg::R0, Reg::R0, 0));
        a.push(Insn::exit());
        a.bind(fail);
        a.push(Insn::mov64(Reg::R0, 0xff));
        a.push(Insn::exit());
    })
}

fn set_key(set_id: u32, prefix_bits: u32, addr: &[u8]) -> Vec<u8> {
    let mut data = set_id.to_be_bytes().to_vec();
    data.extend_from_slice(addr);
    lpm_key(32 + prefix_bits, &data)
}

fn run_with_packet(program: &[u8], maps: Maps, packet: Vec<u8>) -> VmOutput {
    let input = VmInput { packet, ..VmInput::new(program) };
    vm::run(input, maps).unwrap()
}

#[test]
fn lpm_ipv4_longest_prefix_from_program() {
    let mut maps = Maps::new();
    maps.add(LPM4, def("ipsets4", MapKind::LpmTrie, 12, 1, 64)).unwrap();
    maps.update(LPM4, &set_key(1, 0, &[0, 0, 0, 0]), &[100]).unwrap();
    maps.update(LPM4, &set_key(1, 8, &[10, 0, 0, 0]), &[8]).unwrap();
    maps.update(LPM4, &set_key(1, 16, &[10, 1, 0, 0]), &[16]).unwrap();
    maps.update(LPM4, &set_key(1, 32, &[10, 1, 2, 3]), &[32]).unwrap();
    // Another set with a longer overlapping prefix must not leak into set 1.
    maps.update(LPM4, &set_key(2, 24, &[10, 1, 2, 0]), &[24]).unwrap();
    let p = lpm_program(LPM4, 1, 4, 26); // IPv4 source address in Eth+IPv4
    let cases: [([u8; 4], u64); 5] = [
        ([10, 1, 2, 3], 32),
        ([10, 1, 2, 4], 16),
        ([10, 200, 0, 1], 8),
        ([192, 168, 0, 1], 100),
        ([10, 1, 255, 255], 16),
    ];
    for (addr, want) in cases {
        let mut packet = vec![0u8; 34];
        packet[26..30].copy_from_slice(&addr);
        let out = run_with_packet(&p, maps.clone(), packet);
        assert_eq!(returned(&out), want, "{addr:?}");
    }
    // Set 3 has no entries at all, not even /0.
    let p3 = lpm_program(LPM4, 3, 4, 26);
    assert_eq!(returned(&run_with_packet(&p3, maps.clone(), vec![10; 34])), 0xff);
    // Set 2: 10.1.2.x matches /24, 10.1.3.x matches nothing.
    let p2 = lpm_program(LPM4, 2, 4, 26);
    let mut packet = vec![0u8; 34];
    packet[26..30].copy_from_slice(&[10, 1, 2, 9]);
    assert_eq!(returned(&run_with_packet(&p2, maps.clone(), packet.clone())), 24);
    packet[28] = 3;
    assert_eq!(returned(&run_with_packet(&p2, maps, packet)), 0xff);
}

#[test]
fn lpm_ipv6_longest_prefix_from_program() {
    let mut maps = Maps::new();
    maps.add(LPM6, def("ipsets6", MapKind::LpmTrie, 24, 1, 64)).unwrap();
    let db8: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let mut host = db8;
    host[15] = 1;
    let mut subnet = db8;
    subnet[7] = 1; // 2001:db8:0:1::/64
    maps.update(LPM6, &set_key(7, 0, &[0; 16]), &[1]).unwrap();
    maps.update(LPM6, &set_key(7, 32, &db8), &[2]).unwrap();
    maps.update(LPM6, &set_key(7, 128, &host), &[3]).unwrap();
    maps.update(LPM6, &set_key(7, 64, &subnet), &[4]).unwrap();
    let p = lpm_program(LPM6, 7, 16, 22); // IPv6 source address in Eth+IPv6
    let probe = |addr: [u8; 16]| {
        let mut packet = vec![0u8; 54];
        packet[22..38].copy_from_slice(&addr);
        returned(&run_with_packet(&p, maps.clone(), packet))
    };
    assert_eq!(probe(host), 3);
    let mut other_host = host;
    other_host[15] = 2;
    assert_eq!(probe(other_host), 2);
    let mut in_subnet = subnet;
    in_subnet[15] = 9;
    assert_eq!(probe(in_subnet), 4);
    let mut elsewhere = db8;
    elsewhere[0] = 0xfe;
    assert_eq!(probe(elsewhere), 1);
}

/// Writes key 1 = 11, tail-calls slot `index` of PROGS, writes key 2 = 22, returns 2.
fn tail_call_program(index: i32) -> Vec<u8> {
    build(|a| {
        a.push(Insn::mov64(Reg::R6, Reg::R1));
        update(a, HASH, 1, 11, 0);
        a.push(Insn::mov64(Reg::R1, Reg::R6));
        a.push(Insn::ld_map_fd(Reg::R2, PROGS));
        a.push(Insn::mov64(Reg::R3, index));
        a.push(Insn::call(helper::TAIL_CALL));
        update(a, HASH, 2, 22, 0);
        a.push(Insn::mov64(Reg::R0, 2));
        a.push(Insn::exit());
    })
}

#[test]
fn tail_call_into_populated_slot_stops_and_snapshots() {
    let mut maps = standard_maps();
    maps.update(PROGS, &5u32.to_ne_bytes(), &77u32.to_ne_bytes()).unwrap();
    let out = run(&tail_call_program(5), maps).unwrap();
    assert_eq!(out.exit, Exit::TailCall { map: PROGS, index: 5, prog_id: 77 });
    let keys: Vec<Vec<u8>> = out.maps.entries(HASH).into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, vec![1u32.to_ne_bytes().to_vec()], "the write after the tail call never ran");
    let last = out.helper_calls.last().unwrap();
    assert_eq!((last.0, last.1[2], last.1[0] != 0), (12, 5, true));
}

#[test]
fn tail_call_into_empty_slot_falls_through() {
    let mut maps = standard_maps();
    maps.update(PROGS, &5u32.to_ne_bytes(), &77u32.to_ne_bytes()).unwrap();
    let out = run(&tail_call_program(6), maps.clone()).unwrap();
    assert_eq!(out.exit, Exit::Return(2));
    assert_eq!(out.maps.entries(HASH).len(), 2);
    // Out of range index fails the same way.
    let out = run(&tail_call_program(1000), maps).unwrap();
    assert_eq!(out.exit, Exit::Return(2));
}

#[test]
fn tail_call_helper_returns_negative_errno_on_empty_slot() {
    let p = build(|a| {
        a.push(Insn::ld_map_fd(Reg::R2, PROGS));
        a.push(Insn::mov64(Reg::R3, 0));
        a.push(Insn::call(helper::TAIL_CALL));
        a.push(Insn::exit());
    });
    let out = run(&p, standard_maps()).unwrap();
    assert_eq!(returned(&out), neg(libc::ENOENT));
}

#[test]
fn ktime_and_prandom_are_controlled() {
    let p = build(|a| {
        a.push(Insn::call(helper::KTIME_GET_NS));
        a.push(Insn::exit());
    });
    let input = VmInput { ktime_ns: 123_456_789_012, ..VmInput::new(&p) };
    assert_eq!(returned(&vm::run(input, Maps::new()).unwrap()), 123_456_789_012);

    let p = build(|a| {
        a.push(Insn::call(helper::GET_PRANDOM_U32));
        a.push(Insn::mov64(Reg::R6, Reg::R0));
        a.push(Insn::call(helper::GET_PRANDOM_U32));
        a.push(Insn::alu64(AluOp::Lsh, Reg::R0, 32));
        a.push(Insn::alu64(AluOp::Or, Reg::R0, Reg::R6));
        a.push(Insn::exit());
    });
    let with_seed = |seed| {
        let input = VmInput { prandom_seed: seed, ..VmInput::new(&p) };
        returned(&vm::run(input, Maps::new()).unwrap())
    };
    let first = with_seed(1);
    assert_eq!(first, with_seed(1));
    assert_ne!(first, with_seed(2));
    assert_ne!(first >> 32, first & 0xffff_ffff, "successive calls differ");
}

#[test]
fn skb_load_bytes_reads_packet_and_fails_past_the_end() {
    let p = build(|a| {
        a.push(Insn::st(Size::W, Reg::FP, -4, 0x5555));
        a.push(Insn::mov64(Reg::R2, 12));
        a.push(Insn::mov64(Reg::R3, Reg::FP));
        a.push(Insn::alu64(AluOp::Add, Reg::R3, -4));
        a.push(Insn::mov64(Reg::R4, 4));
        a.push(Insn::call(helper::SKB_LOAD_BYTES));
        let failed = a.label();
        a.jump_if(Cond::Ne, Reg::R0, 0, failed);
        a.push(Insn::ldx(Size::W, Reg::R0, Reg::FP, -4));
        a.push(Insn::exit());
        a.bind(failed);
        // Return the error in the high half and the (zeroed) buffer in the low half.
        a.push(Insn::alu64(AluOp::Lsh, Reg::R0, 32));
        a.push(Insn::ldx(Size::W, Reg::R1, Reg::FP, -4));
        a.push(Insn::alu64(AluOp::Or, Reg::R0, Reg::R1));
        a.push(Insn::exit());
    });
    let packet: Vec<u8> = (0..20).collect();
    let out = run_with_packet(&p, Maps::new(), packet);
    assert_eq!(returned(&out), u64::from(u32::from_ne_bytes([12, 13, 14, 15])));
    let out = run_with_packet(&p, Maps::new(), vec![1; 15]);
    assert_eq!(returned(&out), neg(libc::EFAULT) << 32);
}

#[test]
fn context_fields_and_direct_packet_access() {
    // r0 = skb->mark + skb->protocol + eth type read through data/data_end.
    let p = build(|a| {
        let short = a.label();
        a.push(Insn::ldx(Size::W, Reg::R2, Reg::R1, 76)); // data
        a.push(Insn::ldx(Size::W, Reg::R3, Reg::R1, 80)); // data_end
        a.push(Insn::mov64(Reg::R4, Reg::R2));
        a.push(Insn::alu64(AluOp::Add, Reg::R4, 14));
        a.jump_if(Cond::Gt, Reg::R4, Reg::R3, short);
        a.push(Insn::ldx(Size::H, Reg::R0, Reg::R2, 12));
        a.push(Insn::ldx(Size::W, Reg::R5, Reg::R1, 8)); // mark
        a.push(Insn::alu64(AluOp::Add, Reg::R0, Reg::R5));
        a.push(Insn::ldx(Size::W, Reg::R5, Reg::R1, 16)); // protocol
        a.push(Insn::alu64(AluOp::Lsh, Reg::R5, 32));
        a.push(Insn::alu64(AluOp::Add, Reg::R0, Reg::R5));
        a.push(Insn::exit());
        a.bind(short);
        a.push(Insn::mov64(Reg::R0, 2));
        a.push(Insn::exit());
    });
    let mut packet = vec![0u8; 14];
    packet[12..14].copy_from_slice(&[0x86, 0xdd]);
    let skb = SkBuff { mark: 0x100, protocol: 0x86dd, ..SkBuff::default() };
    let input = VmInput { skb: skb.clone(), packet, ..VmInput::new(&p) };
    let out = vm::run(input, Maps::new()).unwrap();
    // Loads are little-endian, so the be16 0x86dd reads as 0xdd86.
    assert_eq!(returned(&out), 0xdd86 + 0x100 + (0xdd86u64 << 32));
    let input = VmInput { skb, packet: vec![0; 10], ..VmInput::new(&p) };
    assert_eq!(returned(&vm::run(input, Maps::new()).unwrap()), 2);
}

#[test]
fn out_of_bounds_packet_read_is_an_error() {
    let p = build(|a| {
        a.push(Insn::ldx(Size::W, Reg::R2, Reg::R1, 76));
        a.push(Insn::ldx(Size::DW, Reg::R0, Reg::R2, 8)); // no data_end check
        a.push(Insn::exit());
    });
    let input = VmInput { packet: vec![0; 12], ..VmInput::new(&p) };
    match vm::run(input, Maps::new()) {
        Err(VmError::Execution(message)) => {
            assert!(message.contains("out of bounds"), "{message}");
            assert!(message.contains("insn #1"), "numbered in the caller's program: {message}");
            assert!(!message.contains('\n'));
        }
        other => panic!("expected an execution error, got {other:?}"),
    }
}

#[test]
fn out_of_bounds_stack_read_is_an_error() {
    let p = build(|a| {
        a.push(Insn::mov64(Reg::R0, 0));
        a.push(Insn::ldx(Size::DW, Reg::R0, Reg::FP, 8));
        a.push(Insn::exit());
    });
    let err = run(&p, Maps::new()).unwrap_err();
    assert!(matches!(&err, VmError::Execution(m) if m.contains("insn #1")), "{err}");
}

#[test]
fn unknown_helper_is_rejected_with_its_instruction() {
    let p = build(|a| {
        a.push(Insn::mov64(Reg::R0, 0));
        a.push(Insn::call(6)); // bpf_trace_printk: not mocked
        a.push(Insn::exit());
    });
    let err = run(&p, Maps::new()).unwrap_err();
    assert_eq!(err, VmError::Rejected { insn: Some(1), message: "unknown helper 6".into() });
    assert_eq!(err.to_string(), "program rejected at insn #1: unknown helper 6");
}

#[test]
fn full_hash_returns_e2big_to_the_program() {
    // The hash holds 2 entries; the third distinct key fails, replacing one succeeds.
    let p = build(|a| {
        update(a, HASH, 1, 1, 0);
        a.push(Insn::mov64(Reg::R7, Reg::R0));
        update(a, HASH, 2, 2, 0);
        a.push(Insn::alu64(AluOp::Or, Reg::R7, Reg::R0));
        update(a, HASH, 3, 3, 0);
        a.push(Insn::mov64(Reg::R8, Reg::R0));
        update(a, HASH, 1, 4, 0);
        a.push(Insn::alu64(AluOp::Or, Reg::R7, Reg::R0));
        update(a, HASH, 2, 5, BPF_NOEXIST as i32);
        a.push(Insn::mov64(Reg::R9, Reg::R0));
        // r0 = r7 (must be 0) << 32 | low 16 bits of r8 (E2BIG) << 16 | low 16 of r9 (EEXIST)
        a.push(Insn::mov64(Reg::R0, Reg::R7));
        a.push(Insn::alu64(AluOp::Lsh, Reg::R0, 32));
        a.push(Insn::alu64(AluOp::And, Reg::R8, 0xffff));
        a.push(Insn::alu64(AluOp::Lsh, Reg::R8, 16));
        a.push(Insn::alu64(AluOp::Or, Reg::R0, Reg::R8));
        a.push(Insn::alu64(AluOp::And, Reg::R9, 0xffff));
        a.push(Insn::alu64(AluOp::Or, Reg::R0, Reg::R9));
        a.push(Insn::exit());
    });
    let out = run(&p, standard_maps()).unwrap();
    let low16 = |errno: i32| neg(errno) & 0xffff;
    assert_eq!(returned(&out), (low16(libc::E2BIG) << 16) | low16(libc::EEXIST));
    let values: Vec<u64> = out
        .maps
        .entries(HASH)
        .iter()
        .map(|(_, v)| u64::from_ne_bytes(v.as_slice().try_into().unwrap()))
        .collect();
    assert_eq!(values, vec![4, 2]);
}

#[test]
fn delete_from_program_and_array_delete_error() {
    let p = build(|a| {
        a.push(Insn::st(Size::W, Reg::FP, -4, 9));
        a.push(Insn::mov64(Reg::R2, Reg::FP));
        a.push(Insn::alu64(AluOp::Add, Reg::R2, -4));
        a.push(Insn::ld_map_fd(Reg::R1, HASH));
        a.push(Insn::call(helper::MAP_DELETE_ELEM));
        a.push(Insn::mov64(Reg::R6, Reg::R0));
        a.push(Insn::mov64(Reg::R2, Reg::FP));
        a.push(Insn::alu64(AluOp::Add, Reg::R2, -4));
        a.push(Insn::ld_map_fd(Reg::R1, ARRAY));
        a.push(Insn::call(helper::MAP_DELETE_ELEM));
        a.push(Insn::alu64(AluOp::Lsh, Reg::R0, 32));
        a.push(Insn::alu64(AluOp::And, Reg::R6, 0xffff));
        a.push(Insn::alu64(AluOp::Or, Reg::R0, Reg::R6));
        a.push(Insn::exit());
    });
    let mut maps = standard_maps();
    maps.update(HASH, &9u32.to_ne_bytes(), &[1; 8]).unwrap();
    maps.update(HASH, &8u32.to_ne_bytes(), &[2; 8]).unwrap();
    let out = run(&p, maps).unwrap();
    assert_eq!(returned(&out), neg(libc::EINVAL) << 32);
    assert_eq!(out.maps.entries(HASH), vec![(8u32.to_ne_bytes().to_vec(), vec![2; 8])]);
}

#[test]
fn helper_misuse_and_unknown_maps_are_errors_not_panics() {
    // Key pointer into nowhere.
    let p = build(|a| {
        a.push(Insn::ld_map_fd(Reg::R1, HASH));
        a.push(Insn::mov64(Reg::R2, 0x1000));
        a.push(Insn::call(helper::MAP_LOOKUP_ELEM));
        a.push(Insn::exit());
    });
    let err = run(&p, standard_maps()).unwrap_err();
    assert!(matches!(&err, VmError::HelperMisuse { helper: 1, .. }), "{err}");
    // A map handle the Maps do not define.
    let p = build(|a| {
        a.push(Insn::ld_map_fd(Reg::R1, 99));
        a.push(Insn::mov64(Reg::R0, 0));
        a.push(Insn::exit());
    });
    assert_eq!(run(&p, standard_maps()).unwrap_err(), VmError::UnknownMap(99));
    // A plain number used as a map.
    let p = build(|a| {
        a.push(Insn::mov64(Reg::R1, 12345));
        a.push(Insn::mov64(Reg::R2, Reg::FP));
        a.push(Insn::alu64(AluOp::Add, Reg::R2, -8));
        a.push(Insn::call(helper::MAP_LOOKUP_ELEM));
        a.push(Insn::exit());
    });
    assert!(matches!(run(&p, standard_maps()), Err(VmError::HelperMisuse { .. })));
    // Tail call through a map that is not a prog array.
    let p = build(|a| {
        a.push(Insn::ld_map_fd(Reg::R2, HASH));
        a.push(Insn::mov64(Reg::R3, 0));
        a.push(Insn::call(helper::TAIL_CALL));
        a.push(Insn::exit());
    });
    assert!(matches!(run(&p, standard_maps()), Err(VmError::HelperMisuse { helper: 12, .. })));
    // The helper state does not leak into the next run on this thread.
    let ok = build(|a| {
        a.push(Insn::mov64(Reg::R0, 3));
        a.push(Insn::exit());
    });
    assert_eq!(returned(&run(&ok, Maps::new()).unwrap()), 3);
}

#[test]
fn program_length_limits() {
    let mut too_long = Vec::with_capacity((vm::MAX_INSNS + 1) * 8);
    for _ in 0..vm::MAX_INSNS {
        too_long.extend_from_slice(&[0xb7, 0, 0, 0, 0, 0, 0, 0]);
    }
    too_long.extend_from_slice(&[0x95, 0, 0, 0, 0, 0, 0, 0]);
    let err = run(&too_long, Maps::new()).unwrap_err();
    assert!(
        matches!(&err, VmError::Rejected { insn: None, message } if message.contains("more than"))
    );
    assert!(matches!(run(&[], Maps::new()), Err(VmError::Rejected { insn: None, .. })));
    let ok = [0xb7, 0, 0, 0, 0, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0];
    let big_packet = VmInput { packet: vec![0; vm::MAX_PACKET_BYTES + 1], ..VmInput::new(&ok) };
    assert!(matches!(vm::run(big_packet, Maps::new()), Err(VmError::Input(_))));
}

#[test]
fn long_straight_line_program_runs() {
    let p = build(|a| {
        a.push(Insn::mov64(Reg::R0, 0));
        for _ in 0..100_000 {
            a.push(Insn::alu64(AluOp::Add, Reg::R0, 3));
        }
        a.push(Insn::exit());
    });
    assert_eq!(returned(&run(&p, Maps::new()).unwrap()), 300_000);
}

#[test]
fn jmp32_and_bpf_to_bpf_calls_work() {
    let p = build(|a| {
        let sub = a.label();
        let wrong = a.label();
        a.push(Insn::ld_imm64(Reg::R6, 0xffff_ffff_0000_0005));
        // 32-bit compare sees 5.
        a.jump32_if(Cond::Ne, Reg::R6, 5, wrong);
        a.push(Insn::mov64(Reg::R1, 20));
        a.push(Insn::Call(polc::asm::Callee::Local(4)));
        a.push(Insn::alu64(AluOp::Add, Reg::R0, 1));
        a.push(Insn::exit());
        a.bind(wrong);
        a.push(Insn::mov64(Reg::R0, 0));
        a.push(Insn::exit());
        a.bind(sub);
        a.push(Insn::mov64(Reg::R0, Reg::R1));
        a.push(Insn::alu64(AluOp::Mul, Reg::R0, 2));
        a.push(Insn::exit());
    });
    assert_eq!(returned(&run(&p, Maps::new()).unwrap()), 41);
}

/// Raw rbpf 0.4.1 behaviour behind the engine's static rejections (see vm::prepare).
mod rbpf_quirks {
    fn insn(opc: u8, dst: u8, src: u8, off: i16, imm: i32) -> [u8; 8] {
        let o = off.to_le_bytes();
        let i = imm.to_le_bytes();
        [opc, dst | (src << 4), o[0], o[1], i[0], i[1], i[2], i[3]]
    }

    fn raw_run(insns: &[[u8; 8]]) -> Result<u64, String> {
        let code = insns.concat();
        let vm = rbpf::EbpfVmNoData::new(Some(&code)).map_err(|e| e.to_string())?;
        vm.execute_program().map_err(|e| e.to_string())
    }

    fn polc_rejects(insns: &[[u8; 8]]) -> bool {
        let code = insns.concat();
        matches!(
            polc::vm::run(polc::vm::VmInput::new(&code), polc::vm::Maps::new()),
            Err(polc::vm::VmError::Rejected { .. })
        )
    }

    const EXIT: [u8; 8] = [0x95, 0, 0, 0, 0, 0, 0, 0];

    #[test]
    fn silently_wrong_in_rbpf_and_rejected_by_the_engine() {
        // sdiv: -6 / 2 should be -3; rbpf divides unsigned.
        let sdiv = [insn(0xb7, 0, 0, 0, -6), insn(0x37, 0, 0, 1, 2), EXIT];
        assert_ne!(raw_run(&sdiv).unwrap(), (-3i64) as u64);
        assert!(polc_rejects(&sdiv));
        // movsx8: 0xff sign-extended is -1; rbpf moves it unchanged.
        let movsx = [insn(0xb7, 1, 0, 0, 0xff), insn(0xbf, 0, 1, 8, 0), EXIT];
        assert_eq!(raw_run(&movsx).unwrap(), 0xff);
        assert!(polc_rejects(&movsx));
        // jeq r0, -1: the kernel sign-extends imm (taken for r0 = -1); rbpf does not.
        let jeq = [
            insn(0xb7, 0, 0, 0, -1),
            insn(0x15, 0, 0, 1, -1),
            insn(0xb7, 0, 0, 0, 0), // not taken: r0 = 0
            EXIT,
        ];
        assert_eq!(raw_run(&jeq).unwrap(), 0, "rbpf did not take the jump");
        assert!(polc_rejects(&jeq));
        // LD_ABS is accepted by rbpf's verifier but reads raw bytes (no ntohs).
        assert!(polc_rejects(&[insn(0x28, 0, 0, 0, 12), EXIT]));
    }

    #[test]
    fn rejected_by_rbpf_itself() {
        let cases: [(&str, [u8; 8]); 6] = [
            ("gotol (JMP32 JA)", insn(0x06, 0, 0, 0, 0)),
            ("ldsx", insn(0x81, 0, 10, -8, 0)),
            ("bswap", insn(0xd7, 0, 0, 0, 16)),
            ("atomic add", insn(0xdb, 10, 0, -8, 0)),
            ("atomic add 32", insn(0xc3, 10, 0, -8, 0)),
            ("tail call insn", insn(0x8d, 0, 0, 0, 0)),
        ];
        for (what, i) in cases {
            let err = raw_run(&[i, EXIT]).unwrap_err();
            assert!(err.contains("Verifier") || err.contains("not supported"), "{what}: {err}");
            assert!(polc_rejects(&[i, EXIT]), "{what}");
        }
        // JMP32 itself works in rbpf.
        let jmp32 = [
            insn(0x18, 0, 0, 0, 5),
            insn(0, 0, 0, 0, 1),    // r0 = 0x1_0000_0005
            insn(0x16, 0, 0, 1, 5), // if w0 == 5 goto +1
            insn(0xb7, 0, 0, 0, 0),
            EXIT,
        ];
        assert_eq!(raw_run(&jmp32).unwrap(), 0x1_0000_0005);
    }
}

/// Cost of one run (prepare + rbpf + helpers): `cargo test --test vm_engine -- --ignored
/// --nocapture timing`.
#[test]
#[ignore]
fn timing() {
    let mut maps = Maps::new();
    maps.add(PERCPU, def("scratch", MapKind::PerCpuArray, 4, 64, 1)).unwrap();
    let mut ipsets = Maps::new();
    ipsets.add(LPM4, def("ipsets4", MapKind::LpmTrie, 12, 1, 4096)).unwrap();
    for i in 0..1000u32 {
        let addr = (0x0a00_0000 | (i << 8)).to_be_bytes();
        ipsets.update(LPM4, &set_key(1, 24, &addr), &[1]).unwrap();
    }
    let store = build(|a| {
        lookup(a, PERCPU, 0);
        let missing = a.label();
        a.jump_if(Cond::Eq, Reg::R0, 0, missing);
        a.push(Insn::st(Size::W, Reg::R0, 0, 0xa01bb));
        a.bind(missing);
        a.push(Insn::mov64(Reg::R0, 2));
        a.push(Insn::exit());
    });
    let lpm = lpm_program(LPM4, 1, 4, 26);
    for (name, program, maps) in
        [("percpu store", &store, &maps), ("lpm 1000 entries", &lpm, &ipsets)]
    {
        let n = 2000;
        let start = std::time::Instant::now();
        for _ in 0..n {
            let input = VmInput { packet: vec![10; 34], ..VmInput::new(program) };
            vm::run(input, maps.clone()).unwrap();
        }
        eprintln!("{name}: {:.1} us/run", start.elapsed().as_secs_f64() * 1e6 / f64::from(n));
        let start = std::time::Instant::now();
        for _ in 0..n {
            std::hint::black_box(maps.clone());
        }
        eprintln!(
            "  of which Maps::clone: {:.1} us",
            start.elapsed().as_secs_f64() * 1e6 / f64::from(n)
        );
    }
}
