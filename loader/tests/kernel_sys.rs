//! Kernel tests of the raw bpf(2) layer and the runtime wrapper (skip without bpf rights;
//! `POLC_REQUIRE_KERNEL=1` makes them fail instead).

use std::os::fd::AsFd;

use polc_loader::sys::{self, MapKind, MapSpec, TestRun, UpdateFlags};
use polc_loader::{require_kernel, Runtime};

fn spec(kind: MapKind, key_size: u32, value_size: u32, max_entries: u32) -> MapSpec<'static> {
    MapSpec { kind, name: "polc_test", key_size, value_size, max_entries }
}

#[test]
fn hash_map_update_lookup_delete() {
    require_kernel!();
    let map = sys::map_create(&spec(MapKind::Hash, 8, 4, 16)).unwrap();
    let key = 0x0102_0304_0506_0708u64.to_ne_bytes();
    assert_eq!(sys::map_lookup(map.as_fd(), &key).unwrap(), None);
    sys::map_update(map.as_fd(), &key, &7u32.to_ne_bytes(), UpdateFlags::NoExist).unwrap();
    assert_eq!(sys::map_lookup(map.as_fd(), &key).unwrap(), Some(7u32.to_ne_bytes().to_vec()));
    // NoExist on an existing key is refused with EEXIST.
    let e =
        sys::map_update(map.as_fd(), &key, &8u32.to_ne_bytes(), UpdateFlags::NoExist).unwrap_err();
    assert_eq!(e.errno(), Some(libc::EEXIST), "{e}");
    sys::map_update(map.as_fd(), &key, &9u32.to_ne_bytes(), UpdateFlags::Exist).unwrap();
    assert_eq!(sys::map_lookup(map.as_fd(), &key).unwrap(), Some(9u32.to_ne_bytes().to_vec()));
    assert!(sys::map_delete(map.as_fd(), &key).unwrap());
    assert!(!sys::map_delete(map.as_fd(), &key).unwrap());
    assert_eq!(sys::map_lookup(map.as_fd(), &key).unwrap(), None);
}

#[test]
fn array_map_update_lookup() {
    require_kernel!();
    let map = sys::map_create(&spec(MapKind::Array, 4, 8, 4)).unwrap();
    // Arrays are pre-filled with zeroes.
    assert_eq!(sys::map_lookup(map.as_fd(), &2u32.to_ne_bytes()).unwrap(), Some(vec![0; 8]));
    sys::map_update(map.as_fd(), &2u32.to_ne_bytes(), &[1, 2, 3, 4, 5, 6, 7, 8], UpdateFlags::Any)
        .unwrap();
    assert_eq!(
        sys::map_lookup(map.as_fd(), &2u32.to_ne_bytes()).unwrap(),
        Some(vec![1, 2, 3, 4, 5, 6, 7, 8])
    );
    // Out of range keys are absent.
    assert_eq!(sys::map_lookup(map.as_fd(), &4u32.to_ne_bytes()).unwrap(), None);
    let info = sys::map_info(map.as_fd()).unwrap();
    assert_eq!((info.map_type, info.key_size, info.value_size, info.max_entries), (2, 4, 8, 4));
}

#[test]
fn percpu_array_update_lookup() {
    require_kernel!();
    let map = sys::map_create(&spec(MapKind::PerCpuArray, 4, 12, 1)).unwrap();
    let cpus = sys::possible_cpus().unwrap();
    let stride = 16; // 12 rounded up to 8
    assert_eq!(sys::percpu_value_len(12).unwrap(), stride * cpus);
    let mut all = vec![0u8; stride * cpus];
    for cpu in 0..cpus {
        all[cpu * stride] = cpu as u8 + 1;
        all[cpu * stride + 11] = 0xaa;
    }
    sys::map_update(map.as_fd(), &0u32.to_ne_bytes(), &all, UpdateFlags::Any).unwrap();
    let values = sys::map_lookup_percpu(map.as_fd(), &0u32.to_ne_bytes()).unwrap().unwrap();
    assert_eq!(values.len(), cpus);
    for (cpu, v) in values.iter().enumerate() {
        assert_eq!(v.len(), 12);
        assert_eq!((v[0], v[11]), (cpu as u8 + 1, 0xaa));
    }
    // A value of the wrong size is refused before the syscall.
    let e =
        sys::map_update(map.as_fd(), &0u32.to_ne_bytes(), &[0; 12], UpdateFlags::Any).unwrap_err();
    assert!(e.to_string().contains("value is 12 bytes"), "{e}");
}

#[test]
fn lpm_trie_longest_prefix_wins() {
    require_kernel!();
    // key = u32 prefix length (host order) + IPv4 address (network order)
    let key = |plen: u32, a: [u8; 4]| {
        let mut k = plen.to_ne_bytes().to_vec();
        k.extend_from_slice(&a);
        k
    };
    let map = sys::map_create(&spec(MapKind::LpmTrie, 8, 4, 16)).unwrap();
    sys::map_update(map.as_fd(), &key(8, [10, 0, 0, 0]), &1u32.to_ne_bytes(), UpdateFlags::Any)
        .unwrap();
    sys::map_update(map.as_fd(), &key(24, [10, 1, 2, 0]), &2u32.to_ne_bytes(), UpdateFlags::Any)
        .unwrap();
    let hit = |a| sys::map_lookup(map.as_fd(), &key(32, a)).unwrap();
    assert_eq!(hit([10, 1, 2, 3]), Some(2u32.to_ne_bytes().to_vec()));
    assert_eq!(hit([10, 9, 9, 9]), Some(1u32.to_ne_bytes().to_vec()));
    assert_eq!(hit([11, 1, 2, 3]), None);
}

#[test]
fn prog_array_set_and_clear() {
    require_kernel!();
    let map = sys::map_create(&spec(MapKind::ProgArray, 4, 4, 4)).unwrap();
    let prog = sys::prog_load("polc_t_ok", &[0xb7, 0, 0, 0, 0, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0])
        .unwrap();
    sys::prog_array_set(map.as_fd(), 1, prog.as_fd()).unwrap();
    // Userspace lookups of prog arrays are not supported by the kernel; clearing tells us.
    assert!(sys::prog_array_clear(map.as_fd(), 1).unwrap());
    assert!(!sys::prog_array_clear(map.as_fd(), 1).unwrap());
}

#[test]
fn prog_load_test_run_and_info() {
    require_kernel!();
    // r0 = 7; exit
    let insns = [0xb7, 0, 0, 0, 7, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0];
    let prog = sys::prog_load("polc_t_seven", &insns).unwrap();
    let info = sys::prog_info(prog.as_fd()).unwrap();
    assert_eq!(info.prog_type, sys::PROG_TYPE_SCHED_CLS);
    assert_ne!(info.id, 0);
    let packet = [0u8; 60];
    let out = sys::prog_test_run(prog.as_fd(), &TestRun { data: &packet, ctx: None, repeat: 10 })
        .unwrap();
    assert_eq!(out.retval, 7);
    assert_eq!(out.data_out.len(), packet.len());
}

#[test]
fn rejected_program_error_carries_the_verifier_log() {
    require_kernel!();
    // exit without setting r0
    let e = sys::prog_load("polc_t_bad", &[0x95, 0, 0, 0, 0, 0, 0, 0]).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("R0 !read_ok"), "{msg}");
    assert!(msg.contains("BPF_PROG_LOAD"), "{msg}");
}

#[test]
fn runtime_fails_closed_with_an_empty_slot() {
    require_kernel!();
    let rt = Runtime::load().unwrap();
    rt.clear_slot(polc_abi::SLOT_FIRST_POLICY).unwrap();
    // The packet must come from a registered endpoint (lo, ifindex 1, as test runs see it)
    // and parse, or the runtime would pass it (not ours) or drop it as malformed.
    let mut ep = polc_abi::Endpoint {
        endpoint_id: 1,
        ingress_slot: 0,
        egress_slot: 0,
        ..polc_abi::Endpoint::default()
    };
    // The packet's source (the pod side at the from-endpoint hook): not spoofed.
    ep.set_address(std::net::IpAddr::from([10, 0, 0, 1]));
    rt.set_endpoint(1, &ep).unwrap();
    let packet = ipv4_udp_packet();
    let out = rt.test_run(&TestRun { data: &packet, ctx: None, repeat: 1 }).unwrap();
    assert_eq!(out.retval as i32, polc_abi::TC_ACT_SHOT);
    let states = rt.flow_states().unwrap();
    let touched: Vec<_> = states.iter().filter(|s| s.stage == polc_abi::stage::RUNTIME).collect();
    assert_eq!(touched.len(), 1, "{states:?}");
    assert_eq!(touched[0].rule_id, polc_abi::RULE_ID_NONE);
    assert_eq!(touched[0].verdict, polc_abi::verdict::UNSET);
}

/// Ethernet + IPv4 (checksum valid) + UDP 10.0.0.1:1000 -> 10.0.0.2:53, 8 payload bytes.
fn ipv4_udp_packet() -> Vec<u8> {
    let mut p = vec![0u8; 14];
    p[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = [0x45u8, 0, 0, 36, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2];
    let sum: u32 = ip.chunks(2).map(|w| u16::from_be_bytes([w[0], w[1]]) as u32).sum();
    let folded = (sum & 0xffff) + (sum >> 16);
    ip[10..12].copy_from_slice(&(!(folded as u16)).to_be_bytes());
    p.extend_from_slice(&ip);
    p.extend_from_slice(&[0x03, 0xe8, 0x00, 0x35, 0x00, 0x10, 0x00, 0x00]);
    p.extend_from_slice(&[0u8; 8]);
    p
}

#[test]
fn map_count_reads_batches_and_falls_back_to_key_walks() {
    require_kernel!();
    // 10,000 entries: three batches of the hash map's batch lookup.
    let map = sys::map_create(&spec(MapKind::Hash, 4, 8, 16_384)).unwrap();
    assert_eq!(sys::map_count(map.as_fd()).unwrap(), 0);
    for k in 0u32..10_000 {
        sys::map_update(map.as_fd(), &k.to_ne_bytes(), &[0; 8], UpdateFlags::Any).unwrap();
    }
    assert_eq!(sys::map_count(map.as_fd()).unwrap(), 10_000);
    sys::map_delete(map.as_fd(), &77u32.to_ne_bytes()).unwrap();
    assert_eq!(sys::map_count(map.as_fd()).unwrap(), 9_999);
    // LPM tries have no batch lookup: the count walks the keys.
    let lpm = sys::map_create(&spec(MapKind::LpmTrie, 8, 4, 64)).unwrap();
    for last in 0u8..5 {
        let mut key = 32u32.to_ne_bytes().to_vec();
        key.extend_from_slice(&[10, 0, 0, last]);
        sys::map_update(lpm.as_fd(), &key, &[1, 0, 0, 0], UpdateFlags::Any).unwrap();
    }
    assert_eq!(sys::map_count(lpm.as_fd()).unwrap(), 5);
}
