//! The tc runtime in the kernel (BPF_PROG_TEST_RUN with crafted packets): parsing of every
//! supported header path, dispatch per hook through the endpoint map, fail-closed tail
//! calls, the epilogue's conntrack entries, the one-lookup fast path, reply direction, the
//! TCP lifecycle, timeouts, related ICMP errors, the per-CPU flow cache (what fills it, what
//! it answers, what clears it) and drop counters. Assertions read the maps.
//!
//! Kernel tests: they print `SKIP: ...` without bpf(2) rights and fail instead with
//! `POLC_REQUIRE_KERNEL=1`. The benchmark is `#[ignore]`d; run it with
//! `cargo test -p polc --release --test runtime_fastpath -- --ignored --nocapture`.

use std::os::fd::{AsFd, AsRawFd};

use polc::asm::{helper, AluOp, Asm, Cond, Insn, Reg, Size};
use polc::codegen::map;
use polc::compile::{compile_ir_with, Compiled, Options};
use polc::engine::patch_map_handles;
use polc::synth;
use polc_abi::{
    ct_approved, ct_nat, ct_state, ct_timeout, direction, drop_reason, family, flow_cache_index,
    flow_cache_tag, stage, verdict, CtEntry, CtKey, Endpoint, FlowCacheSlot, FlowState, NatBackend,
    NatFrontendKey, NatService, FLOW_CACHE_DEFAULT_NS, RULE_ID_NONE, SLOT_EPILOGUE, SLOT_NONE,
    TC_ACT_OK, TC_ACT_SHOT,
};
use polc_loader::sys::{self, Fd, MapKind, MapSpec, TestRun};
use polc_loader::{require_kernel, Hook, Runtime, RuntimeConfig};

// ---------------------------------------------------------------- packet builders

/// One's-complement sum of `data` (big-endian 16-bit words) added to `acc`.
fn sum16(data: &[u8], mut acc: u32) -> u32 {
    for c in data.chunks(2) {
        let w = u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]);
        acc += u32::from(w);
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;
const ICMPV6: u8 = 58;
const SCTP: u8 = 132;
const GRE: u8 = 47;

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const FIN: u8 = 0x01;
const RST: u8 = 0x04;

fn tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut t = Vec::with_capacity(20);
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    t
}

fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&u16::try_from(8 + payload.len()).unwrap().to_be_bytes());
    t.extend_from_slice(&[0, 0]);
    t.extend_from_slice(payload);
    t
}

/// SCTP common header (ports, verification tag, checksum left 0: the runtime does not
/// verify L4 checksums) and nothing else.
fn sctp(sport: u16, dport: u16) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&[0; 8]);
    t
}

/// ICMP/ICMPv6 message: type, code, checksum (filled by the IP builder), 4 bytes rest.
fn icmp(ty: u8, code: u8, rest: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut t = vec![ty, code, 0, 0];
    t.extend_from_slice(&rest);
    t.extend_from_slice(payload);
    t
}

fn echo(ty: u8, id: u16) -> Vec<u8> {
    let id = id.to_be_bytes();
    icmp(ty, 0, [id[0], id[1], 0, 1], b"ping")
}

/// Where a protocol's checksum sits in its header, and whether it covers a pseudo-header.
fn csum_field(proto: u8, v6: bool) -> Option<(usize, bool)> {
    match proto {
        TCP => Some((16, true)),
        UDP => Some((6, true)),
        ICMP if !v6 => Some((2, false)),
        ICMPV6 if v6 => Some((2, true)),
        _ => None,
    }
}

fn eth(ethertype: u16) -> Vec<u8> {
    let mut p = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01];
    p.extend_from_slice(&ethertype.to_be_bytes());
    p
}

/// IPv4 knobs: header options (a multiple of 4 bytes) and the flags/fragment-offset word.
#[derive(Default)]
struct V4 {
    options: Vec<u8>,
    frag: u16,
}

fn ipv4_with(src: [u8; 4], dst: [u8; 4], proto: u8, l4: &[u8], o: &V4) -> Vec<u8> {
    let mut l4 = l4.to_vec();
    if let Some((at, pseudo)) = csum_field(proto, false) {
        let mut acc = 0;
        if pseudo {
            acc = sum16(&src, acc);
            acc = sum16(&dst, acc);
            acc += u32::from(proto) + l4.len() as u32;
        }
        let c = fold(sum16(&l4, acc));
        l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }
    let ihl = 20 + o.options.len();
    let mut h = vec![0x40 | (ihl / 4) as u8, 0];
    h.extend_from_slice(&u16::try_from(ihl + l4.len()).unwrap().to_be_bytes());
    h.extend_from_slice(&[0, 1]);
    h.extend_from_slice(&o.frag.to_be_bytes());
    h.extend_from_slice(&[64, proto, 0, 0]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h.extend_from_slice(&o.options);
    let c = fold(sum16(&h, 0));
    h[10..12].copy_from_slice(&c.to_be_bytes());
    let mut p = eth(0x0800);
    p.extend_from_slice(&h);
    p.extend_from_slice(&l4);
    p
}

fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, l4: &[u8]) -> Vec<u8> {
    ipv4_with(src, dst, proto, l4, &V4::default())
}

/// An IPv6 extension header to put before L4: (type, body length in bytes after the
/// next-header/length pair or, for fragments, the fragment-offset word).
#[derive(Clone, Copy)]
enum Ext {
    HopByHop,
    Routing,
    DestOpts,
    Fragment { offset_field: u16 },
}

fn ipv6_with(src: [u8; 16], dst: [u8; 16], proto: u8, l4: &[u8], exts: &[Ext]) -> Vec<u8> {
    let mut l4 = l4.to_vec();
    if let Some((at, _)) = csum_field(proto, true) {
        let mut acc = sum16(&src, 0);
        acc = sum16(&dst, acc);
        acc += l4.len() as u32 + u32::from(proto);
        let c = fold(sum16(&l4, acc));
        l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }
    let code = |e: &Ext| match e {
        Ext::HopByHop => 0u8,
        Ext::Routing => 43,
        Ext::DestOpts => 60,
        Ext::Fragment { .. } => 44,
    };
    let mut ext_bytes = Vec::new();
    for (i, e) in exts.iter().enumerate() {
        let next = exts.get(i + 1).map_or(proto, code);
        match e {
            Ext::Fragment { offset_field } => {
                ext_bytes.extend_from_slice(&[next, 0]);
                ext_bytes.extend_from_slice(&offset_field.to_be_bytes());
                ext_bytes.extend_from_slice(&[0, 0, 0, 7]);
            }
            // 16 bytes: length field 1 (in 8-byte units, not counting the first 8).
            _ => {
                ext_bytes.extend_from_slice(&[next, 1]);
                ext_bytes.extend_from_slice(&[0; 14]);
            }
        }
    }
    let first = exts.first().map_or(proto, code);
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&u16::try_from(ext_bytes.len() + l4.len()).unwrap().to_be_bytes());
    h.extend_from_slice(&[first, 64]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    let mut p = eth(0x86dd);
    p.extend_from_slice(&h);
    p.extend_from_slice(&ext_bytes);
    p.extend_from_slice(&l4);
    p
}

fn ipv6(src: [u8; 16], dst: [u8; 16], proto: u8, l4: &[u8]) -> Vec<u8> {
    ipv6_with(src, dst, proto, l4, &[])
}

const A4: [u8; 4] = [10, 0, 0, 1];
const B4: [u8; 4] = [10, 0, 0, 2];
const C4: [u8; 4] = [10, 0, 0, 3];
const A6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const B6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

fn v4(a: [u8; 4]) -> [u8; 16] {
    let mut x = [0u8; 16];
    x[..4].copy_from_slice(&a);
    x
}

// ---------------------------------------------------------------- kernel fixtures

/// lo: exists in every network namespace, and is what a test run without ctx sees.
const IFINDEX: u32 = 1;
const ENDPOINT_ID: u32 = 77;
const INGRESS_SLOT: u32 = 3;
const EGRESS_SLOT: u32 = 5;
const INGRESS_RULE: i32 = 300;
const EGRESS_RULE: i32 = 500;

/// `struct __sk_buff` prefix up to and including `ifindex` (offset 40); the rest zero.
fn skb_ctx(ifindex: u32) -> Vec<u8> {
    let mut c = vec![0u8; 48];
    c[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    c
}

/// A runtime with small conntrack (tests load many), the test endpoint on lo, and a
/// counter map the policy programs bump (to see whether policy ran).
struct Fixture {
    rt: Runtime,
    counter: Fd,
    ctx: Vec<u8>,
    _progs: Vec<Fd>,
}

fn small_config() -> RuntimeConfig {
    RuntimeConfig { ct_max_entries: 4096, ..RuntimeConfig::default() }
}

/// Pins the calling thread to CPU 0: test runs execute on the calling CPU, and the
/// per-CPU scratch record must be read from the CPU that ran them.
fn pin_to_cpu0() {
    // SAFETY: a zeroed cpu_set_t with bit 0 set, for the calling thread (pid 0).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        let rc = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(rc, 0, "sched_setaffinity: {}", std::io::Error::last_os_error());
    }
}

impl Fixture {
    fn new(config: &RuntimeConfig) -> Fixture {
        pin_to_cpu0();
        let rt = Runtime::load_with(config).unwrap_or_else(|e| panic!("load the runtime: {e}"));
        let counter = sys::map_create(&MapSpec {
            kind: MapKind::Array,
            name: "polc_t_count",
            key_size: 4,
            value_size: 8,
            max_entries: 1,
        })
        .expect("counter map");
        let f = Fixture { rt, counter, ctx: skb_ctx(IFINDEX), _progs: Vec::new() };
        f.be_pod(A4);
        f
    }

    /// Makes the test endpoint the pod with IPv4 address `own4` (and IPv6 address A6): the
    /// runtime drops a new flow whose pod-side address is not the pod's own.
    fn be_pod(&self, own4: [u8; 4]) {
        self.rt.set_endpoint(IFINDEX, &endpoint_with(own4, A6)).expect("endpoint");
    }

    /// Puts a policy program deciding `v` with `rule` into `slot`.
    fn policy(&mut self, slot: u32, v: u32, rule: i32) {
        let code = policy_program(&self.rt, self.counter.raw(), v, rule, 0);
        let prog = sys::prog_load("polc_t_policy", &code).unwrap_or_else(|e| panic!("{e}"));
        self.rt.set_slot(slot, prog.as_fd()).expect("set slot");
        self._progs.push(prog);
    }

    fn run(&self, hook: Hook, packet: &[u8]) -> i32 {
        self.run_at(&self.ctx, hook, packet)
    }

    /// Like [`Fixture::run`] as seen on the interface of `ctx`.
    fn run_at(&self, ctx: &[u8], hook: Hook, packet: &[u8]) -> i32 {
        let run = TestRun { data: packet, ctx: Some(ctx), repeat: 1 };
        self.rt
            .test_run_hook(hook, &run)
            .unwrap_or_else(|e| panic!("test run of {packet:02x?}: {e}"))
            .retval as i32
    }

    fn policy_runs(&self) -> u64 {
        let v = sys::map_lookup(self.counter.as_fd(), &0u32.to_ne_bytes()).unwrap().unwrap();
        u64::from_ne_bytes(v.try_into().unwrap())
    }

    fn drops(&self) -> Vec<u64> {
        self.rt.drop_counts().expect("drop counters")
    }

    /// The scratch record the last miss filled (the epilogue marks it).
    fn last_state(&self) -> FlowState {
        let states = self.rt.flow_states().expect("states");
        let touched: Vec<_> = states.into_iter().filter(|s| s.stage != stage::NONE).collect();
        assert_eq!(touched.len(), 1, "one CPU ran the tests of this runtime: {touched:?}");
        touched[0]
    }

    fn ct(&self, key: &CtKey) -> Option<CtEntry> {
        self.rt.ct_lookup(key).expect("ct lookup")
    }

    /// Every filled flow cache slot: (CPU, index, slot).
    fn cache(&self) -> Vec<(usize, u32, FlowCacheSlot)> {
        self.rt.flow_cache_slots().expect("flow cache slots")
    }
}

/// The test endpoint's record: one program per direction serves both families here (the
/// tests send IPv6 through the same slots; per-family dispatch has its own test), with
/// the pod's own addresses `own4` and `own6`.
fn endpoint_with(own4: [u8; 4], own6: [u8; 16]) -> Endpoint {
    let mut ep = Endpoint {
        endpoint_id: ENDPOINT_ID,
        ingress_slot: INGRESS_SLOT,
        egress_slot: EGRESS_SLOT,
        flags: 0,
        ingress_slot_v6: INGRESS_SLOT,
        egress_slot_v6: EGRESS_SLOT,
        ..Endpoint::default()
    };
    ep.set_address(std::net::IpAddr::from(own4));
    ep.set_address(std::net::IpAddr::from(own6));
    ep
}

fn off(field: usize) -> i16 {
    i16::try_from(field).expect("small offset")
}

/// A policy-shaped program like the compiler's: look up the FlowState, bump the test
/// counter, run `extra_rules` never-matching port comparisons (to size a benchmark), write
/// verdict/rule/stage, tail-call the epilogue; drop if anything fails.
fn policy_program(rt: &Runtime, counter_fd: i32, v: u32, rule: i32, extra_rules: u16) -> Vec<u8> {
    let state_fd = rt.state_map_fd().expect("state map").as_raw_fd() as u32;
    let jump_fd = rt.jump_map_fd().expect("jump map").as_raw_fd() as u32;
    let mut a = Asm::new();
    let drop = a.label();
    let no_counter = a.label();
    a.push(Insn::mov64(Reg::R6, Reg::R1));
    a.push(Insn::st(Size::W, Reg::FP, -4, 0));
    a.push(Insn::mov64(Reg::R2, Reg::FP));
    a.push(Insn::alu64(AluOp::Add, Reg::R2, -4));
    a.push(Insn::ld_map_fd(Reg::R1, state_fd));
    a.push(Insn::call(helper::MAP_LOOKUP_ELEM));
    a.jump_if(Cond::Eq, Reg::R0, 0, drop);
    a.push(Insn::mov64(Reg::R7, Reg::R0));
    a.push(Insn::mov64(Reg::R2, Reg::FP));
    a.push(Insn::alu64(AluOp::Add, Reg::R2, -4));
    a.push(Insn::ld_map_fd(Reg::R1, counter_fd as u32));
    a.push(Insn::call(helper::MAP_LOOKUP_ELEM));
    a.jump_if(Cond::Eq, Reg::R0, 0, no_counter);
    a.push(Insn::ldx(Size::DW, Reg::R1, Reg::R0, 0));
    a.push(Insn::alu64(AluOp::Add, Reg::R1, 1));
    a.push(Insn::stx(Size::DW, Reg::R0, 0, Reg::R1));
    a.bind(no_counter);
    let decide = a.label();
    a.push(Insn::ldx(Size::H, Reg::R1, Reg::R7, off(polc_abi::FLOW_DST_PORT)));
    for i in 0..extra_rules {
        // A rule that never matches the benchmark packet (dst port 443).
        a.jump_if(Cond::Eq, Reg::R1, 10_000 + i32::from(i), decide);
    }
    a.bind(decide);
    a.push(Insn::st(Size::W, Reg::R7, off(polc_abi::FLOW_VERDICT), v as i32));
    a.push(Insn::st(Size::W, Reg::R7, off(polc_abi::FLOW_RULE_ID), rule));
    a.push(Insn::st(Size::W, Reg::R7, off(polc_abi::FLOW_STAGE), stage::POLICY as i32));
    a.push(Insn::mov64(Reg::R1, Reg::R6));
    a.push(Insn::ld_map_fd(Reg::R2, jump_fd));
    a.push(Insn::mov64(Reg::R3, SLOT_EPILOGUE as i32));
    a.push(Insn::call(helper::TAIL_CALL));
    a.bind(drop);
    a.push(Insn::mov64(Reg::R0, TC_ACT_SHOT));
    a.push(Insn::exit());
    a.assemble().expect("assembles").try_to_bytes().expect("encodes")
}

fn key4(proto: u8, src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> CtKey {
    CtKey::new(family::IPV4, proto, &v4(src), sport, &v4(dst), dport).0
}

// ---------------------------------------------------------------- parsing

/// Every parser path, each through a denying policy (so nothing is tracked and every
/// packet reaches the policy): what the policy sees in the FlowState.
#[test]
fn parser_fills_the_flow_state_for_each_header_path() {
    require_kernel!();
    let mut f = Fixture::new(&small_config());
    f.policy(EGRESS_SLOT, verdict::DENY, 9);
    struct Case {
        name: &'static str,
        packet: Vec<u8>,
        fam: u8,
        proto: u8,
        ports: (u16, u16),
        icmp: (u8, u8),
        ct_ports: (u16, u16),
        tcp_flags: u8,
        src: [u8; 16],
        dst: [u8; 16],
    }
    let opts = V4 { options: vec![1, 1, 1, 0, 0x94, 4, 0, 0], frag: 0 }; // NOPs + router alert
    let first_frag = V4 { options: vec![], frag: 0x2000 }; // MF, offset 0
    let big_udp = udp(5353, 53, &[0u8; 64]);
    let v6_exts = [Ext::HopByHop, Ext::Routing, Ext::DestOpts];
    let cases = vec![
        Case {
            name: "ipv4 tcp with options",
            packet: ipv4_with(A4, B4, TCP, &tcp(40000, 443, SYN), &opts),
            fam: 4,
            proto: TCP,
            ports: (40000, 443),
            icmp: (0, 0),
            ct_ports: (40000, 443),
            tcp_flags: SYN,
            src: v4(A4),
            dst: v4(B4),
        },
        Case {
            name: "ipv4 udp first fragment",
            packet: ipv4_with(A4, B4, UDP, &big_udp, &first_frag),
            fam: 4,
            proto: UDP,
            ports: (5353, 53),
            icmp: (0, 0),
            ct_ports: (5353, 53),
            tcp_flags: 0,
            src: v4(A4),
            dst: v4(B4),
        },
        Case {
            name: "ipv4 sctp",
            packet: ipv4(A4, B4, SCTP, &sctp(7000, 9000)),
            fam: 4,
            proto: SCTP,
            ports: (7000, 9000),
            icmp: (0, 0),
            ct_ports: (7000, 9000),
            tcp_flags: 0,
            src: v4(A4),
            dst: v4(B4),
        },
        Case {
            name: "ipv4 icmp echo",
            packet: ipv4(A4, B4, ICMP, &echo(8, 0x4242)),
            fam: 4,
            proto: ICMP,
            ports: (0, 0),
            icmp: (8, 0),
            ct_ports: (0x4242, 0x4242),
            tcp_flags: 0,
            src: v4(A4),
            dst: v4(B4),
        },
        Case {
            name: "ipv4 other protocol (GRE)",
            packet: ipv4(A4, B4, GRE, &[0, 0, 0x08, 0]),
            fam: 4,
            proto: GRE,
            ports: (0, 0),
            icmp: (0, 0),
            ct_ports: (0, 0),
            tcp_flags: 0,
            src: v4(A4),
            dst: v4(B4),
        },
        Case {
            name: "ipv6 tcp",
            packet: ipv6(A6, B6, TCP, &tcp(40001, 8080, SYN | ACK)),
            fam: 6,
            proto: TCP,
            ports: (40001, 8080),
            icmp: (0, 0),
            ct_ports: (40001, 8080),
            tcp_flags: SYN | ACK,
            src: A6,
            dst: B6,
        },
        Case {
            name: "ipv6 udp behind hop-by-hop, routing, destination options",
            packet: ipv6_with(A6, B6, UDP, &udp(1000, 2000, b"x"), &v6_exts),
            fam: 6,
            proto: UDP,
            ports: (1000, 2000),
            icmp: (0, 0),
            ct_ports: (1000, 2000),
            tcp_flags: 0,
            src: A6,
            dst: B6,
        },
        Case {
            name: "ipv6 first fragment",
            packet: ipv6_with(
                A6,
                B6,
                UDP,
                &udp(1001, 2001, b"y"),
                &[Ext::Fragment { offset_field: 1 }],
            ),
            fam: 6,
            proto: UDP,
            ports: (1001, 2001),
            icmp: (0, 0),
            ct_ports: (1001, 2001),
            tcp_flags: 0,
            src: A6,
            dst: B6,
        },
        Case {
            name: "ipv6 icmpv6 echo",
            packet: ipv6(A6, B6, ICMPV6, &echo(128, 7)),
            fam: 6,
            proto: ICMPV6,
            ports: (0, 0),
            icmp: (128, 0),
            ct_ports: (7, 7),
            tcp_flags: 0,
            src: A6,
            dst: B6,
        },
        Case {
            name: "ipv6 icmpv6 destination unreachable (unrelated)",
            packet: ipv6(A6, B6, ICMPV6, &icmp(1, 4, [0; 4], &[0; 8])),
            fam: 6,
            proto: ICMPV6,
            ports: (0, 0),
            icmp: (1, 4),
            ct_ports: (0, 0),
            tcp_flags: 0,
            src: A6,
            dst: B6,
        },
    ];
    for (i, c) in cases.iter().enumerate() {
        assert_eq!(f.run(Hook::FromEndpoint, &c.packet), TC_ACT_SHOT, "{}", c.name);
        let st = f.last_state();
        let got = (
            st.family,
            st.protocol,
            (st.src_port, st.dst_port),
            (st.icmp_type, st.icmp_code),
            (st.ct_src_port, st.ct_dst_port),
            st.tcp_flags,
            st.src_addr,
            st.dst_addr,
        );
        let want = (c.fam, c.proto, c.ports, c.icmp, c.ct_ports, c.tcp_flags, c.src, c.dst);
        assert_eq!(got, want, "{}", c.name);
        assert_eq!(
            (st.direction, st.endpoint_id, st.ifindex, st.verdict, st.rule_id, st.stage),
            (direction::EGRESS, ENDPOINT_ID, IFINDEX, verdict::DENY, 9, stage::EPILOGUE),
            "{}",
            c.name
        );
        assert_eq!(st.resume, 0);
        assert_eq!(f.policy_runs(), i as u64 + 1, "{}: the policy ran once", c.name);
        assert_eq!(f.drops()[drop_reason::POLICY_DENY as usize], i as u64 + 1, "{}", c.name);
    }
    assert!(f.rt.ct_entries().unwrap().is_empty(), "a deny creates no conntrack entry");
}

#[test]
fn malformed_truncated_and_fragmented_packets_are_dropped_and_counted() {
    require_kernel!();
    let mut f = Fixture::new(&small_config());
    f.policy(EGRESS_SLOT, verdict::ALLOW, 1);
    let syn = ipv4(A4, B4, TCP, &tcp(1, 2, SYN));
    let mut bad_version = syn.clone();
    bad_version[14] = 0x55;
    let mut short_ihl = syn.clone();
    short_ihl[14] = 0x44;
    let mut long_total = syn.clone();
    long_total[16..18].copy_from_slice(&200u16.to_be_bytes());
    let mut cut_tcp = syn.clone();
    cut_tcp.truncate(14 + 20 + 10); // the TCP header needs 14 bytes for the flags
    let cut_tcp = {
        // Keep the IP total length consistent with what is left.
        let mut p = cut_tcp;
        p[16..18].copy_from_slice(&30u16.to_be_bytes());
        p
    };
    let frag4 = ipv4_with(A4, B4, UDP, &udp(1, 2, b"z"), &V4 { options: vec![], frag: 0x0010 });
    let frag6 = ipv6_with(A6, B6, UDP, &udp(1, 2, b"z"), &[Ext::Fragment { offset_field: 0x0080 }]);
    let too_many = ipv6_with(A6, B6, UDP, &udp(1, 2, b"z"), &[Ext::DestOpts; 9]);
    let mut cut_v6 = ipv6(A6, B6, UDP, &udp(1, 2, b"z"));
    // The kernel's test run refuses an IPv6 packet without a whole IPv6 header, so cut
    // the payload instead: the header announces more than is there.
    cut_v6.truncate(cut_v6.len() - 4);
    let cases: Vec<(&str, Vec<u8>, u32)> = vec![
        ("ipv4 version 5", bad_version, drop_reason::MALFORMED),
        ("ipv4 ihl 4", short_ihl, drop_reason::MALFORMED),
        ("ipv4 total length beyond the packet", long_total, drop_reason::TRUNCATED),
        ("tcp header cut", cut_tcp, drop_reason::TRUNCATED),
        ("ipv4 non-first fragment", frag4, drop_reason::FRAGMENT),
        ("ipv6 non-first fragment", frag6, drop_reason::FRAGMENT),
        ("ipv6 nine extension headers", too_many, drop_reason::IPV6_EXT_LIMIT),
        ("ipv6 payload cut", cut_v6, drop_reason::TRUNCATED),
        (
            "ethertype 0x88cc (LLDP)",
            eth(0x88cc).into_iter().chain([0u8; 46]).collect(),
            drop_reason::ETHERTYPE,
        ),
    ];
    for (name, packet, reason) in &cases {
        let before = f.drops();
        assert_eq!(f.run(Hook::FromEndpoint, packet), TC_ACT_SHOT, "{name}");
        let after = f.drops();
        assert_eq!(after[*reason as usize], before[*reason as usize] + 1, "{name}: {after:?}");
        assert_eq!(after.iter().sum::<u64>(), before.iter().sum::<u64>() + 1, "{name}");
    }
    assert_eq!(f.policy_runs(), 0, "no malformed packet reaches the policy");
    // ARP passes without policy.
    let arp: Vec<u8> = eth(0x0806).into_iter().chain([0u8; 28]).collect();
    assert_eq!(f.run(Hook::ToEndpoint, &arp), TC_ACT_OK);
    // On an interface that is not a polc endpoint nothing is enforced, bad packets included.
    assert!(f.rt.remove_endpoint(IFINDEX).unwrap());
    let before = f.drops();
    assert_eq!(f.run(Hook::FromEndpoint, &cases[0].1), TC_ACT_OK);
    assert_eq!(f.run(Hook::FromEndpoint, &syn), TC_ACT_OK);
    assert_eq!(f.drops(), before);
    assert_eq!(f.policy_runs(), 0);
}

// ---------------------------------------------------------------- dispatch and epilogue

#[test]
fn each_hook_dispatches_to_its_slot_and_the_epilogue_records_the_approval() {
    require_kernel!();
    let mut f = Fixture::new(&small_config());
    f.policy(EGRESS_SLOT, verdict::ALLOW, EGRESS_RULE);
    f.policy(INGRESS_SLOT, verdict::ALLOW, INGRESS_RULE);

    // From the pod, here B: B (higher address) -> A, so the key's lo side is the destination.
    f.be_pod(B4);
    let out = ipv4(B4, A4, UDP, &udp(5000, 53, b"q"));
    assert_eq!(f.run(Hook::FromEndpoint, &out), TC_ACT_OK);
    assert_eq!(f.last_state().direction, direction::EGRESS);
    let key = key4(UDP, B4, 5000, A4, 53);
    assert_eq!((key.addr_lo, key.port_lo, key.addr_hi, key.port_hi), (v4(A4), 53, v4(B4), 5000));
    let e = f.ct(&key).expect("the epilogue created the entry");
    assert_eq!(
        (e.state, e.orig_is_lo, e.approved, e.orig_rule, e.resp_rule),
        (ct_state::OPEN, 0, ct_approved::ORIG, EGRESS_RULE as u32, RULE_ID_NONE)
    );
    assert!(e.last_seen_ns > 0);

    // To the pod, now A: another flow, the ingress slot.
    f.be_pod(A4);
    let inbound = ipv4(C4, A4, TCP, &tcp(33000, 80, SYN));
    assert_eq!(f.run(Hook::ToEndpoint, &inbound), TC_ACT_OK);
    assert_eq!(f.last_state().direction, direction::INGRESS);
    let e = f.ct(&key4(TCP, C4, 33000, A4, 80)).expect("entry");
    assert_eq!(
        (e.state, e.orig_is_lo, e.approved, e.orig_rule, e.resp_rule),
        (ct_state::SYN_SENT, 0, ct_approved::RESP, RULE_ID_NONE, INGRESS_RULE as u32)
    );
    assert_eq!(f.policy_runs(), 2);
    assert_eq!(f.rt.ct_entries().unwrap().len(), 2);

    // IPv6 keys carry family 6 and full addresses.
    let v6 = ipv6(A6, B6, UDP, &udp(1, 2, b"v6"));
    assert_eq!(f.run(Hook::FromEndpoint, &v6), TC_ACT_OK);
    let k6 = CtKey::new(family::IPV6, UDP, &A6, 1, &B6, 2).0;
    assert_eq!((k6.family, k6.addr_lo), (6, A6));
    assert_eq!(f.ct(&k6).expect("v6 entry").approved, ct_approved::ORIG);
}

/// A dual-stack endpoint: each family runs its own program; a family without one is
/// dropped and counted, never handed to the other family's program.
#[test]
fn each_family_dispatches_to_its_own_slot_and_a_missing_family_fails_closed() {
    require_kernel!();
    const EGRESS_V6: u32 = 9;
    const INGRESS_V6: u32 = 11;
    let mut f = Fixture::new(&small_config());
    let ep = Endpoint {
        ingress_slot_v6: INGRESS_V6,
        egress_slot_v6: EGRESS_V6,
        ..endpoint_with(A4, A6)
    };
    f.rt.set_endpoint(IFINDEX, &ep).unwrap();
    // IPv4 egress allows with rule 41, IPv6 egress denies with rule 61; ingress likewise.
    f.policy(EGRESS_SLOT, verdict::ALLOW, 41);
    f.policy(EGRESS_V6, verdict::DENY, 61);
    f.policy(INGRESS_SLOT, verdict::DENY, 42);
    f.policy(INGRESS_V6, verdict::ALLOW, 62);
    let out4 = ipv4(A4, B4, UDP, &udp(5000, 53, b"q"));
    let out6 = ipv6(A6, B6, UDP, &udp(5000, 53, b"q"));
    let in4 = ipv4(B4, A4, TCP, &tcp(33000, 80, SYN));
    let in6 = ipv6(B6, A6, TCP, &tcp(33000, 80, SYN));
    assert_eq!(f.run(Hook::FromEndpoint, &out4), TC_ACT_OK);
    assert_eq!(f.ct(&key4(UDP, A4, 5000, B4, 53)).expect("v4 entry").orig_rule, 41);
    assert_eq!(f.run(Hook::FromEndpoint, &out6), TC_ACT_SHOT);
    assert_eq!(f.last_state().rule_id, 61, "the IPv6 program decided");
    assert_eq!(f.run(Hook::ToEndpoint, &in4), TC_ACT_SHOT);
    assert_eq!(f.last_state().rule_id, 42);
    assert_eq!(f.run(Hook::ToEndpoint, &in6), TC_ACT_OK);
    let k6 = CtKey::new(family::IPV6, TCP, &B6, 33000, &A6, 80).0;
    assert_eq!(f.ct(&k6).expect("v6 entry").resp_rule, 62);
    assert_eq!(f.policy_runs(), 4);
    assert_eq!(f.drops()[drop_reason::POLICY_DENY as usize], 2);

    // An IPv4-only endpoint: IPv6 is dropped before any policy runs, on both hooks.
    let v4_only = Endpoint { ingress_slot_v6: SLOT_NONE, egress_slot_v6: SLOT_NONE, ..ep };
    f.rt.set_endpoint(IFINDEX, &v4_only).unwrap();
    let other6 = ipv6(A6, B6, UDP, &udp(5001, 53, b"q"));
    assert_eq!(f.run(Hook::FromEndpoint, &other6), TC_ACT_SHOT);
    assert_eq!(f.run(Hook::ToEndpoint, &ipv6(B6, A6, UDP, &udp(53, 5002, b"r"))), TC_ACT_SHOT);
    assert_eq!(f.drops()[drop_reason::NO_FAMILY_POLICY as usize], 2);
    assert_eq!(f.drops()[drop_reason::NO_POLICY as usize], 0, "no tail call was tried");
    assert_eq!(f.policy_runs(), 4);
    // IPv4 still runs its program; an IPv6-only endpoint is the mirror image.
    assert_eq!(f.run(Hook::FromEndpoint, &ipv4(A4, C4, UDP, &udp(5003, 53, b"q"))), TC_ACT_OK);
    assert_eq!(f.policy_runs(), 5);
    let v6_only = Endpoint { ingress_slot: SLOT_NONE, egress_slot: SLOT_NONE, ..ep };
    f.rt.set_endpoint(IFINDEX, &v6_only).unwrap();
    assert_eq!(f.run(Hook::FromEndpoint, &ipv4(A4, C4, UDP, &udp(5004, 53, b"q"))), TC_ACT_SHOT);
    assert_eq!(f.drops()[drop_reason::NO_FAMILY_POLICY as usize], 3);
    assert_eq!(f.policy_runs(), 5);
    // IPv6 neighbour discovery still passes without policy (every pod needs it).
    let ns = ipv6(A6, B6, ICMPV6, &icmp(135, 0, [0; 4], &B6));
    f.rt.set_endpoint(IFINDEX, &v4_only).unwrap();
    assert_eq!(f.run(Hook::FromEndpoint, &ns), TC_ACT_OK);
    assert_eq!(f.drops()[drop_reason::NO_FAMILY_POLICY as usize], 3);
}

/// Anti-spoofing: on a conntrack miss the pod's side of the packet (the source leaving
/// the pod, the destination going to it) must be the pod's own address of the packet's
/// family, else the packet is dropped as `spoofed` before any policy runs. Both hooks, both
/// families; the own address goes to policy; replies of an approved flow (conntrack hits)
/// are not checked again.
#[test]
fn a_foreign_pod_side_address_is_dropped_as_spoofed_before_policy() {
    require_kernel!();
    const C6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3];
    let mut f = Fixture::new(&small_config());
    f.policy(EGRESS_SLOT, verdict::ALLOW, EGRESS_RULE);
    f.policy(INGRESS_SLOT, verdict::ALLOW, INGRESS_RULE);
    let spoofed = |f: &Fixture| f.drops()[drop_reason::SPOOFED as usize];
    // (hook, spoofed packet, the same flow with the pod's own address on its side)
    let cases: [(&str, Hook, Vec<u8>, Vec<u8>); 4] = [
        (
            "IPv4 leaving the pod from C",
            Hook::FromEndpoint,
            ipv4(C4, B4, TCP, &tcp(40000, 443, SYN)),
            ipv4(A4, B4, TCP, &tcp(40000, 443, SYN)),
        ),
        (
            "IPv4 to C at the pod",
            Hook::ToEndpoint,
            ipv4(B4, C4, UDP, &udp(5000, 53, b"q")),
            ipv4(B4, A4, UDP, &udp(5000, 53, b"q")),
        ),
        (
            "IPv6 leaving the pod from C",
            Hook::FromEndpoint,
            ipv6(C6, B6, UDP, &udp(5001, 53, b"q")),
            ipv6(A6, B6, UDP, &udp(5001, 53, b"q")),
        ),
        (
            "IPv6 to C at the pod",
            Hook::ToEndpoint,
            ipv6(B6, C6, TCP, &tcp(40001, 80, SYN)),
            ipv6(B6, A6, TCP, &tcp(40001, 80, SYN)),
        ),
    ];
    for (i, (name, hook, bad, good)) in cases.iter().enumerate() {
        let before = f.drops();
        assert_eq!(f.run(*hook, bad), TC_ACT_SHOT, "{name}");
        let after = f.drops();
        assert_eq!(spoofed(&f), i as u64 + 1, "{name}: counted as spoofed: {after:?}");
        assert_eq!(after.iter().sum::<u64>(), before.iter().sum::<u64>() + 1, "{name}");
        assert_eq!(f.policy_runs(), i as u64, "{name}: the policy did not run");
        assert_eq!(f.run(*hook, good), TC_ACT_OK, "{name}: the own address reaches policy");
        assert_eq!(f.policy_runs(), i as u64 + 1, "{name}");
        assert_eq!(spoofed(&f), i as u64 + 1, "{name}");
    }
    assert_eq!(f.rt.ct_entries().unwrap().len(), 4, "only the own flows were recorded");
    // Replies of the approved flows (conntrack hits, no policy left to run) pass.
    f.rt.clear_slot(EGRESS_SLOT).unwrap();
    f.rt.clear_slot(INGRESS_SLOT).unwrap();
    let replies = [
        (Hook::ToEndpoint, ipv4(B4, A4, TCP, &tcp(443, 40000, SYN | ACK))),
        (Hook::FromEndpoint, ipv4(A4, B4, UDP, &udp(53, 5000, b"r"))),
        (Hook::ToEndpoint, ipv6(B6, A6, UDP, &udp(53, 5001, b"r"))),
        (Hook::FromEndpoint, ipv6(A6, B6, TCP, &tcp(80, 40001, SYN | ACK))),
    ];
    for (hook, reply) in &replies {
        assert_eq!(f.run(*hook, reply), TC_ACT_OK);
    }
    assert_eq!(f.policy_runs(), 4);
    assert_eq!(f.drops().iter().sum::<u64>(), 4, "only the four spoofed packets dropped");

    // A family the endpoint has programs for but no address of (the loader refuses such an
    // endpoint): everything of that family is foreign, fail closed.
    let mut no_v6 = endpoint_with(A4, A6);
    no_v6.own_addrs = polc_abi::own_addr::V4;
    f.rt.set_endpoint(IFINDEX, &no_v6).unwrap();
    let new6 = ipv6(A6, B6, UDP, &udp(5002, 53, b"q"));
    assert_eq!(f.run(Hook::FromEndpoint, &new6), TC_ACT_SHOT);
    assert_eq!(spoofed(&f), 5);
    assert_eq!(f.drops()[drop_reason::NO_POLICY as usize], 0, "no tail call was tried");
}

/// Runs `f` on a thread in a fresh network namespace that has, besides lo (ifindex 1), a
/// veth pair; the ifindex of one end is passed to `f` (a test run's ctx may only name an
/// existing interface). The namespace goes away with the thread.
fn with_second_interface(f: impl FnOnce(u32) + Send + 'static) {
    let joined = std::thread::spawn(move || {
        // SAFETY: unshare(2) of this thread's network namespace only.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
        // `ip` runs in the namespace of the thread that spawns it.
        let out = std::process::Command::new("ip")
            .args(["link", "add", "polct0", "type", "veth", "peer", "name", "polct1"])
            .output()
            .expect("run ip");
        assert!(out.status.success(), "ip link add: {}", String::from_utf8_lossy(&out.stderr));
        // SAFETY: a NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(c"polct0".as_ptr()) };
        assert!(ifindex > 1, "ifindex of the veth: {ifindex}");
        f(ifindex)
    })
    .join();
    if let Err(e) = joined {
        std::panic::resume_unwind(e);
    }
}

/// A conntrack approval holds only on the interface that got it: a pod replaying another
/// pod's established 5-tuple (either direction) misses the fast path and is dropped as
/// spoofed; the pod that owns the flow keeps its fast path.
#[test]
fn an_approval_holds_only_on_the_interface_that_got_it() {
    require_kernel!();
    with_second_interface(|other_ifindex| {
        let mut f = Fixture::new(&small_config());
        f.policy(EGRESS_SLOT, verdict::ALLOW, EGRESS_RULE);
        // The pod on the second interface is C.
        f.rt.set_endpoint(other_ifindex, &endpoint_with(C4, B6)).expect("endpoint C");
        let other = skb_ctx(other_ifindex);
        let syn = ipv4(A4, B4, TCP, &tcp(40000, 443, SYN));
        assert_eq!(f.run(Hook::FromEndpoint, &syn), TC_ACT_OK, "A opens a flow to B");
        let key = key4(TCP, A4, 40000, B4, 443);
        let e = f.ct(&key).expect("entry");
        assert_eq!((e.approved, e.orig_ifindex, e.resp_ifindex), (ct_approved::ORIG, IFINDEX, 0));
        f.rt.clear_slot(EGRESS_SLOT).unwrap();
        let ack = ipv4(A4, B4, TCP, &tcp(40000, 443, ACK));
        let reply = ipv4(B4, A4, TCP, &tcp(443, 40000, SYN | ACK));
        // C replays A's packets: a miss at C's interface, and A4 is not C's address.
        assert_eq!(f.run_at(&other, Hook::FromEndpoint, &ack), TC_ACT_SHOT, "C sends as A");
        assert_eq!(f.run_at(&other, Hook::ToEndpoint, &reply), TC_ACT_SHOT, "A's reply to C");
        assert_eq!(f.drops()[drop_reason::SPOOFED as usize], 2);
        assert_eq!(f.policy_runs(), 1);
        // A itself still rides its entry both ways (no policy program left to run).
        assert_eq!(f.run(Hook::ToEndpoint, &reply), TC_ACT_OK, "B's reply reaches A");
        assert_eq!(f.run(Hook::FromEndpoint, &ack), TC_ACT_OK, "A's ACK");
        assert_eq!(f.ct(&key).expect("entry").state, ct_state::ESTABLISHED);
        assert_eq!(f.drops().iter().sum::<u64>(), 2);
    });
}

#[test]
fn a_missing_policy_program_fails_closed() {
    require_kernel!();
    let f = Fixture::new(&small_config());
    let p = ipv4(A4, B4, TCP, &tcp(1000, 443, SYN));
    assert_eq!(f.run(Hook::FromEndpoint, &p), TC_ACT_SHOT);
    assert_eq!(f.run(Hook::ToEndpoint, &ipv4(B4, A4, TCP, &tcp(1000, 443, SYN))), TC_ACT_SHOT);
    assert_eq!(f.drops()[drop_reason::NO_POLICY as usize], 2);
    let st = f.last_state();
    assert_eq!((st.stage, st.verdict), (stage::RUNTIME, verdict::UNSET), "filled, never decided");
    assert!(f.rt.ct_entries().unwrap().is_empty());
    // An endpoint whose policy writes no verdict is denied by the epilogue.
    let mut f = f;
    f.policy(EGRESS_SLOT, verdict::UNSET, 1);
    assert_eq!(f.run(Hook::FromEndpoint, &p), TC_ACT_SHOT);
    assert_eq!(f.drops()[drop_reason::NO_VERDICT as usize], 1);
}

// ---------------------------------------------------------------- conntrack

#[test]
fn established_flows_take_the_fast_path_and_follow_the_tcp_lifecycle() {
    require_kernel!();
    let mut f = Fixture::new(&small_config());
    f.policy(EGRESS_SLOT, verdict::ALLOW, EGRESS_RULE);
    let key = key4(TCP, A4, 40000, B4, 443);
    let state = |f: &Fixture| f.ct(&key).expect("entry").state;

    assert_eq!(f.run(Hook::FromEndpoint, &ipv4(A4, B4, TCP, &tcp(40000, 443, SYN))), TC_ACT_OK);
    assert_eq!(state(&f), ct_state::SYN_SENT);
    assert_eq!(f.policy_runs(), 1);
    // From now on no policy program exists: everything below is the fast path.
    assert!(f.rt.clear_slot(EGRESS_SLOT).unwrap());
    let seen = f.ct(&key).unwrap().last_seen_ns;
    // The conntrack clock counts kernel ticks (at most 10 ms, HZ=100): let it advance.
    std::thread::sleep(std::time::Duration::from_millis(25));
    assert_eq!(f.run(Hook::FromEndpoint, &ipv4(A4, B4, TCP, &tcp(40000, 443, SYN))), TC_ACT_OK);
    assert!(f.ct(&key).unwrap().last_seen_ns > seen, "a hit refreshes last_seen");
    // The reply arrives at the pod's to-endpoint hook: allowed as a reply, no policy.
    assert_eq!(f.run(Hook::ToEndpoint, &ipv4(B4, A4, TCP, &tcp(443, 40000, SYN | ACK))), TC_ACT_OK);
    assert_eq!(state(&f), ct_state::SYN_RECV);
    assert_eq!(f.run(Hook::FromEndpoint, &ipv4(A4, B4, TCP, &tcp(40000, 443, ACK))), TC_ACT_OK);
    assert_eq!(state(&f), ct_state::ESTABLISHED);
    assert_eq!(f.run(Hook::ToEndpoint, &ipv4(B4, A4, TCP, &tcp(443, 40000, ACK))), TC_ACT_OK);
    assert_eq!(state(&f), ct_state::ESTABLISHED);
    assert_eq!(
        f.run(Hook::FromEndpoint, &ipv4(A4, B4, TCP, &tcp(40000, 443, FIN | ACK))),
        TC_ACT_OK
    );
    assert_eq!(state(&f), ct_state::FIN_WAIT);
    assert_eq!(f.policy_runs(), 1, "only the first packet went through policy");
    // A new SYN on the closing tuple is a new connection: policy again (none: drop).
    assert_eq!(f.run(Hook::FromEndpoint, &ipv4(A4, B4, TCP, &tcp(40000, 443, SYN))), TC_ACT_SHOT);
    assert_eq!(f.drops()[drop_reason::NO_POLICY as usize], 1);
    // RST closes.
    assert_eq!(f.run(Hook::ToEndpoint, &ipv4(B4, A4, TCP, &tcp(443, 40000, RST))), TC_ACT_OK);
    assert_eq!(state(&f), ct_state::CLOSED);

    // A packet that is not a reply does not ride the entry: the pod's peer B opening its
    // own flow to A's port 40000 from a new port is a miss (no ingress policy: drop).
    assert_eq!(f.run(Hook::ToEndpoint, &ipv4(B4, A4, TCP, &tcp(444, 40000, SYN))), TC_ACT_SHOT);
}

/// A pod-to-pod flow on one node: the source's egress policy at its from-endpoint hook,
/// then the destination's ingress policy at its to-endpoint hook; the entry records both.
#[test]
fn both_hooks_of_a_local_flow_decide_once_each() {
    require_kernel!();
    let mut f = Fixture::new(&small_config());
    f.policy(EGRESS_SLOT, verdict::ALLOW, EGRESS_RULE);
    f.policy(INGRESS_SLOT, verdict::DENY, INGRESS_RULE);
    // The test endpoint plays A at the from-endpoint hook and B at the to-endpoint hook
    // (one interface, its own address switched).
    let syn = ipv4(A4, B4, TCP, &tcp(40000, 80, SYN));
    let key = key4(TCP, A4, 40000, B4, 80);
    assert_eq!(f.run(Hook::FromEndpoint, &syn), TC_ACT_OK, "A's egress allows");
    assert_eq!(f.ct(&key).unwrap().approved, ct_approved::ORIG);
    f.be_pod(B4);
    assert_eq!(f.run(Hook::ToEndpoint, &syn), TC_ACT_SHOT, "B's ingress denies");
    assert_eq!(f.ct(&key).unwrap().approved, ct_approved::ORIG, "a deny adds nothing");
    assert_eq!(f.policy_runs(), 2);
    // B's ingress changes to allow: the next SYN is approved on B's side too.
    f.policy(INGRESS_SLOT, verdict::ALLOW, INGRESS_RULE);
    assert_eq!(f.run(Hook::ToEndpoint, &syn), TC_ACT_OK);
    let e = f.ct(&key).unwrap();
    assert_eq!(e.approved, ct_approved::ORIG | ct_approved::RESP);
    assert_eq!((e.orig_rule, e.resp_rule), (EGRESS_RULE as u32, INGRESS_RULE as u32));
    assert_eq!(f.policy_runs(), 3);
    // Now both sides pass on the fast path without any policy program.
    f.rt.clear_slot(EGRESS_SLOT).unwrap();
    f.rt.clear_slot(INGRESS_SLOT).unwrap();
    let synack = ipv4(B4, A4, TCP, &tcp(80, 40000, SYN | ACK));
    assert_eq!(f.run(Hook::FromEndpoint, &synack), TC_ACT_OK, "B replies (B's from-ep)");
    assert_eq!(f.run(Hook::ToEndpoint, &synack), TC_ACT_OK, "the reply reaches A (A's to-ep)");
    assert_eq!(f.run(Hook::FromEndpoint, &syn), TC_ACT_OK);
    assert_eq!(f.run(Hook::ToEndpoint, &syn), TC_ACT_OK);
    assert_eq!(f.policy_runs(), 3);
    assert_eq!(f.ct(&key).unwrap().state, ct_state::SYN_RECV);
}

/// The conntrack clock (jiffies x the tick length the loader measured) runs at real
/// time: a wrong tick length would scale every timeout.
#[test]
fn the_conntrack_clock_runs_at_real_time() {
    require_kernel!();
    let mut f = Fixture::new(&small_config());
    f.policy(EGRESS_SLOT, verdict::ALLOW, 1);
    let dns = ipv4(A4, B4, UDP, &udp(5000, 53, b"q"));
    let key = key4(UDP, A4, 5000, B4, 53);
    let start = std::time::Instant::now();
    assert_eq!(f.run(Hook::FromEndpoint, &dns), TC_ACT_OK);
    let first = f.ct(&key).expect("entry").last_seen_ns;
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(f.run(Hook::FromEndpoint, &dns), TC_ACT_OK);
    let elapsed = start.elapsed().as_nanos() as u64;
    let advanced = f.ct(&key).expect("entry").last_seen_ns.wrapping_sub(first);
    assert_eq!(f.policy_runs(), 1, "the second packet was a hit");
    // Jiffies lag and catch up by a tick or two (at most 10 ms each) against real time;
    // a wrong tick length (HZ 250 taken for 300, say) is off by 33 ms or more.
    assert!(
        (180_000_000..=elapsed + 20_000_000).contains(&advanced),
        "the clock advanced {advanced} ns over {elapsed} ns of real time (200 ms asleep)"
    );
}

#[test]
fn expired_entries_are_misses() {
    require_kernel!();
    let mut timeouts = polc_abi::CT_DEFAULT_TIMEOUTS_NS;
    timeouts[ct_timeout::UDP] = 20_000_000; // 20 ms
    let mut f = Fixture::new(&RuntimeConfig {
        ct_max_entries: 1024,
        ct_timeouts_ns: timeouts,
        ..RuntimeConfig::default()
    });
    f.policy(EGRESS_SLOT, verdict::ALLOW, 1);
    let dns = ipv4(A4, B4, UDP, &udp(5000, 53, b"q"));
    let tcp_syn = ipv4(A4, B4, TCP, &tcp(5000, 53, SYN));
    assert_eq!(f.run(Hook::FromEndpoint, &dns), TC_ACT_OK);
    assert_eq!(f.run(Hook::FromEndpoint, &tcp_syn), TC_ACT_OK);
    assert_eq!(f.run(Hook::FromEndpoint, &dns), TC_ACT_OK);
    assert_eq!(f.policy_runs(), 2, "the second UDP packet is a hit");
    std::thread::sleep(std::time::Duration::from_millis(60));
    assert_eq!(f.run(Hook::FromEndpoint, &dns), TC_ACT_OK);
    assert_eq!(f.policy_runs(), 3, "after 20 ms the UDP entry expired: policy again");
    assert_eq!(f.run(Hook::FromEndpoint, &tcp_syn), TC_ACT_OK);
    assert_eq!(f.policy_runs(), 3, "TCP SYN_SENT keeps its default 20 s");
    // Aging an entry by hand: last_seen far in the past.
    let key = key4(TCP, A4, 5000, B4, 53);
    let mut e = f.ct(&key).unwrap();
    e.last_seen_ns = e.last_seen_ns.saturating_sub(21_000_000_000);
    f.rt.ct_update(&key, &e).unwrap();
    assert_eq!(f.run(Hook::FromEndpoint, &tcp_syn), TC_ACT_OK);
    assert_eq!(f.policy_runs(), 4, "older than 20 s: expired");
    assert!(f.ct(&key).unwrap().last_seen_ns > e.last_seen_ns, "the epilogue renewed it");
}

#[test]
fn icmp_errors_about_tracked_flows_are_related() {
    require_kernel!();
    let mut f = Fixture::new(&small_config());
    f.policy(EGRESS_SLOT, verdict::ALLOW, 1);
    let query = ipv4(A4, B4, UDP, &udp(5000, 53, b"q"));
    assert_eq!(f.run(Hook::FromEndpoint, &query), TC_ACT_OK);
    f.rt.clear_slot(EGRESS_SLOT).unwrap();
    // B answers "port unreachable", quoting A's packet (IP header + 8 bytes).
    let quoted = &query[14..14 + 28];
    let unreachable = ipv4(B4, A4, ICMP, &icmp(3, 3, [0; 4], quoted));
    assert_eq!(f.run(Hook::ToEndpoint, &unreachable), TC_ACT_OK, "related");
    // An error quoting a flow nobody tracked goes to policy (none here: drop).
    let other = ipv4(C4, B4, UDP, &udp(5000, 53, b"q"));
    let stray = ipv4(B4, A4, ICMP, &icmp(3, 3, [0; 4], &other[14..14 + 28]));
    assert_eq!(f.run(Hook::ToEndpoint, &stray), TC_ACT_SHOT);
    assert_eq!(f.drops()[drop_reason::NO_POLICY as usize], 1);
    // IPv6: packet too big about a tracked TCP flow.
    f.policy(EGRESS_SLOT, verdict::ALLOW, 1);
    let syn6 = ipv6(A6, B6, TCP, &tcp(41000, 443, SYN));
    assert_eq!(f.run(Hook::FromEndpoint, &syn6), TC_ACT_OK);
    f.rt.clear_slot(EGRESS_SLOT).unwrap();
    let too_big = ipv6(B6, A6, ICMPV6, &icmp(2, 0, 1280u32.to_be_bytes(), &syn6[14..14 + 48]));
    assert_eq!(f.run(Hook::ToEndpoint, &too_big), TC_ACT_OK, "related (v6)");
    assert!(
        f.rt.ct_entries().unwrap().iter().all(|(k, _)| k.protocol != ICMP && k.protocol != ICMPV6),
        "related errors create no entries"
    );
}

#[test]
fn icmp_echo_is_tracked_by_identifier() {
    require_kernel!();
    let mut f = Fixture::new(&small_config());
    f.policy(EGRESS_SLOT, verdict::ALLOW, 1);
    assert_eq!(f.run(Hook::FromEndpoint, &ipv4(A4, B4, ICMP, &echo(8, 99))), TC_ACT_OK);
    f.rt.clear_slot(EGRESS_SLOT).unwrap();
    let key = key4(ICMP, A4, 99, B4, 99);
    assert_eq!(f.ct(&key).expect("echo entry").state, ct_state::OPEN);
    assert_eq!(f.run(Hook::ToEndpoint, &ipv4(B4, A4, ICMP, &echo(0, 99))), TC_ACT_OK, "reply");
    assert_eq!(
        f.run(Hook::ToEndpoint, &ipv4(B4, A4, ICMP, &echo(0, 100))),
        TC_ACT_SHOT,
        "another identifier is another flow"
    );
}

// ---------------------------------------------------------------- flow cache

/// The conntrack key's slot for a packet's view (hook, direction).
fn slot_of(key: &CtKey, to_ep: bool, src_is_lo: bool) -> (u32, u32) {
    let tag = flow_cache_tag::of(to_ep, src_is_lo);
    (flow_cache_index(&key.words(), tag), tag)
}

/// The cache fills only from an ESTABLISHED TCP entry on the conntrack path, with the
/// packet's key, interface and view and an expiry REFRESH after conntrack's stamp. Later
/// packets are answered from it without conntrack (shown by deleting the entry), except
/// SYN, FIN and RST, which go to conntrack (and here, the entry gone, to policy) and take
/// the slot with them.
#[test]
fn an_established_tcp_flow_fills_the_cache_and_later_packets_hit_it() {
    require_kernel!();
    let mut f = Fixture::new(&small_config());
    f.policy(EGRESS_SLOT, verdict::ALLOW, EGRESS_RULE);
    let key = key4(TCP, A4, 40000, B4, 443);
    let syn = ipv4(A4, B4, TCP, &tcp(40000, 443, SYN));
    let synack = ipv4(B4, A4, TCP, &tcp(443, 40000, SYN | ACK));
    let ack = ipv4(A4, B4, TCP, &tcp(40000, 443, ACK));
    assert_eq!(f.run(Hook::FromEndpoint, &syn), TC_ACT_OK);
    assert_eq!(f.run(Hook::FromEndpoint, &syn), TC_ACT_OK, "a retransmitted SYN");
    assert_eq!(f.run(Hook::ToEndpoint, &synack), TC_ACT_OK);
    assert_eq!(f.ct(&key).unwrap().state, ct_state::SYN_RECV);
    assert_eq!(f.cache(), vec![], "nothing cached before ESTABLISHED");
    // The handshake's last ACK: conntrack moves the entry to ESTABLISHED and fills the slot.
    assert_eq!(f.run(Hook::FromEndpoint, &ack), TC_ACT_OK);
    let e = f.ct(&key).unwrap();
    assert_eq!(e.state, ct_state::ESTABLISHED);
    let (index, tag) = slot_of(&key, false, true);
    let slot = FlowCacheSlot {
        key,
        ifindex: IFINDEX,
        tag,
        expires_ns: e.last_seen_ns + FLOW_CACHE_DEFAULT_NS,
    };
    assert_eq!(f.cache(), vec![(0, index, slot)], "CPU 0 (the test's), the view's slot");

    // From here conntrack has no entry and no policy program exists: a packet the cache
    // does not answer is dropped (no_policy).
    assert!(f.rt.clear_slot(EGRESS_SLOT).unwrap());
    assert!(f.rt.ct_delete(&key).unwrap());
    for _ in 0..3 {
        assert_eq!(f.run(Hook::FromEndpoint, &ack), TC_ACT_OK, "a cache hit");
    }
    assert_eq!(f.ct(&key), None, "hits do not touch conntrack");
    assert_eq!(f.drops().iter().sum::<u64>(), 0);
    let mut dropped = 0;
    for flags in [FIN | ACK, RST, SYN, SYN | ACK] {
        // Refill: the entry back, one ACK through conntrack.
        f.rt.ct_update(&key, &e).unwrap();
        assert_eq!(f.run(Hook::FromEndpoint, &ack), TC_ACT_OK);
        assert_eq!(f.cache().len(), 1, "filled again");
        f.rt.ct_delete(&key).unwrap();
        let p = ipv4(A4, B4, TCP, &tcp(40000, 443, flags));
        assert_eq!(f.run(Hook::FromEndpoint, &p), TC_ACT_SHOT, "flags {flags:#x}: to conntrack");
        assert_eq!(f.cache(), vec![], "flags {flags:#x}: the miss cleared the slot");
        assert_eq!(f.run(Hook::FromEndpoint, &ack), TC_ACT_SHOT, "the next ACK misses too");
        dropped += 2;
        assert_eq!(f.drops()[drop_reason::NO_POLICY as usize], dropped);
    }
    assert_eq!(f.policy_runs(), 1);
}

/// A FIN takes the conntrack path: the entry moves to FIN_WAIT and this CPU's slots of
/// every view of the flow (both directions here) are cleared and not refilled.
#[test]
fn a_fin_through_conntrack_clears_the_slot_and_moves_the_entry_to_fin_wait() {
    require_kernel!();
    let mut f = Fixture::new(&small_config());
    f.policy(EGRESS_SLOT, verdict::ALLOW, EGRESS_RULE);
    let key = key4(TCP, A4, 40000, B4, 443);
    let ack = ipv4(A4, B4, TCP, &tcp(40000, 443, ACK));
    let reply = ipv4(B4, A4, TCP, &tcp(443, 40000, ACK));
    // Picked up mid-stream: policy allows the ACK, the epilogue starts ESTABLISHED.
    assert_eq!(f.run(Hook::FromEndpoint, &ack), TC_ACT_OK);
    assert_eq!(f.ct(&key).unwrap().state, ct_state::ESTABLISHED);
    assert_eq!(f.cache(), vec![], "the epilogue does not fill");
    assert_eq!(f.run(Hook::FromEndpoint, &ack), TC_ACT_OK);
    assert_eq!(f.run(Hook::ToEndpoint, &reply), TC_ACT_OK);
    let mut filled: Vec<u32> = f.cache().iter().map(|&(_, i, _)| i).collect();
    filled.sort_unstable();
    let mut want = vec![slot_of(&key, false, true).0, slot_of(&key, true, false).0];
    want.sort_unstable();
    assert_eq!(filled, want, "both views cached, in their own slots");

    let fin = ipv4(A4, B4, TCP, &tcp(40000, 443, FIN | ACK));
    assert_eq!(f.run(Hook::FromEndpoint, &fin), TC_ACT_OK);
    assert_eq!(f.ct(&key).unwrap().state, ct_state::FIN_WAIT);
    assert_eq!(f.cache(), vec![], "the FIN cleared both views");
    // Later packets go through conntrack (FIN_WAIT is never cached).
    let seen = f.ct(&key).unwrap().last_seen_ns;
    std::thread::sleep(std::time::Duration::from_millis(25));
    assert_eq!(f.run(Hook::ToEndpoint, &reply), TC_ACT_OK);
    assert!(f.ct(&key).unwrap().last_seen_ns > seen, "conntrack saw the reply");
    assert_eq!(f.run(Hook::FromEndpoint, &ack), TC_ACT_OK);
    assert_eq!(f.cache(), vec![]);
    assert_eq!(f.policy_runs(), 1);
    // A RST at the other hook clears the views the same way.
    f.rt.ct_update(&key, &CtEntry { state: ct_state::ESTABLISHED, ..f.ct(&key).unwrap() }).unwrap();
    assert_eq!(f.run(Hook::FromEndpoint, &ack), TC_ACT_OK);
    assert_eq!(f.cache().len(), 1);
    let rst = ipv4(B4, A4, TCP, &tcp(443, 40000, RST));
    assert_eq!(f.run(Hook::ToEndpoint, &rst), TC_ACT_OK);
    assert_eq!(f.ct(&key).unwrap().state, ct_state::CLOSED);
    assert_eq!(f.cache(), vec![], "the RST at to_ep cleared the from_ep view");
}

/// NAT'd flows, entries whose timeout is 0 and a runtime loaded with REFRESH = 0 never
/// fill the cache; UDP fills (any state) with the shorter of REFRESH and its timeout.
#[test]
fn flows_that_must_reach_conntrack_never_fill_the_cache() {
    require_kernel!();
    const VIP: [u8; 4] = [10, 96, 0, 10];
    let dns = ipv4(A4, B4, UDP, &udp(5000, 53, b"q"));
    let dns_key = key4(UDP, A4, 5000, B4, 53);

    // UDP: the second packet (the first conntrack hit) fills; expiry capped by the timeout.
    let mut timeouts = polc_abi::CT_DEFAULT_TIMEOUTS_NS;
    timeouts[ct_timeout::UDP] = 300_000_000;
    let mut f = Fixture::new(&RuntimeConfig { ct_timeouts_ns: timeouts, ..small_config() });
    f.policy(EGRESS_SLOT, verdict::ALLOW, 1);
    assert_eq!(f.run(Hook::FromEndpoint, &dns), TC_ACT_OK);
    assert_eq!(f.cache(), vec![]);
    assert_eq!(f.run(Hook::FromEndpoint, &dns), TC_ACT_OK);
    let seen = f.ct(&dns_key).unwrap().last_seen_ns;
    let slots = f.cache();
    assert_eq!(slots.len(), 1);
    assert_eq!(slots[0].2.expires_ns, seen + 300_000_000, "the UDP timeout, not REFRESH");

    // A service: the client's packets to the VIP and the backend's replies are rewritten on
    // the fast path and never cached.
    let fe = NatFrontendKey { addr: v4(VIP), port: 80, protocol: TCP, family: family::IPV4 };
    let svc = NatService { service_id: 7, backend_count: 0, flags: 0, affinity_timeout_s: 0 };
    let backend = NatBackend { addr: v4(B4), port: 8080, _pad: 0 };
    f.rt.set_service(&fe, &svc, &[backend]).expect("service");
    assert_eq!(f.run(Hook::FromEndpoint, &ipv4(A4, VIP, TCP, &tcp(41000, 80, SYN))), TC_ACT_OK);
    let to_vip = ipv4(A4, VIP, TCP, &tcp(41000, 80, ACK));
    let from_backend = ipv4(B4, A4, TCP, &tcp(8080, 41000, ACK));
    for _ in 0..3 {
        assert_eq!(f.run(Hook::FromEndpoint, &to_vip), TC_ACT_OK);
        assert_eq!(f.run(Hook::ToEndpoint, &from_backend), TC_ACT_OK);
    }
    let pre = f.ct(&key4(TCP, A4, 41000, VIP, 80)).expect("pre-NAT entry");
    assert_eq!((pre.state, pre.nat_flags), (ct_state::ESTABLISHED, ct_nat::DNAT));
    assert_eq!(f.cache().len(), 1, "only the UDP flow's slot: {:?}", f.cache());
    assert_eq!(f.policy_runs(), 2);

    // A timeout of 0: every packet is a conntrack miss, nothing fills.
    let mut timeouts = polc_abi::CT_DEFAULT_TIMEOUTS_NS;
    timeouts[ct_timeout::UDP] = 0;
    let mut g = Fixture::new(&RuntimeConfig { ct_timeouts_ns: timeouts, ..small_config() });
    g.policy(EGRESS_SLOT, verdict::ALLOW, 1);
    for _ in 0..3 {
        assert_eq!(g.run(Hook::FromEndpoint, &dns), TC_ACT_OK);
    }
    assert_eq!(g.policy_runs(), 3);
    assert_eq!(g.cache(), vec![]);

    // REFRESH = 0: conntrack answers every packet.
    let mut h = Fixture::new(&RuntimeConfig { flow_cache_ns: 0, ..small_config() });
    h.policy(EGRESS_SLOT, verdict::ALLOW, 1);
    let ack = ipv4(A4, B4, TCP, &tcp(40000, 443, ACK));
    for p in [&dns, &dns, &dns, &ack, &ack, &ack] {
        assert_eq!(h.run(Hook::FromEndpoint, p), TC_ACT_OK);
    }
    assert_eq!(h.policy_runs(), 2);
    assert_eq!(h.cache(), vec![]);
    h.rt.clear_slot(EGRESS_SLOT).unwrap();
    h.rt.ct_delete(&key4(TCP, A4, 40000, B4, 443)).unwrap();
    assert_eq!(h.run(Hook::FromEndpoint, &ack), TC_ACT_SHOT, "no cache to answer");
}

/// A slot answers only its own view: the same key at the other hook, in the other
/// direction or on another interface (a pod replaying the 5-tuple) misses and meets
/// conntrack and the anti-spoofing check. The replay on the owner's slot clears it: the
/// owner's next packet costs a conntrack lookup, never a wrong verdict.
#[test]
fn a_slot_answers_only_its_interface_hook_and_direction() {
    require_kernel!();
    with_second_interface(|other_ifindex| {
        let mut f = Fixture::new(&small_config());
        f.policy(EGRESS_SLOT, verdict::ALLOW, EGRESS_RULE);
        f.rt.set_endpoint(other_ifindex, &endpoint_with(C4, B6)).expect("endpoint C");
        let key = key4(TCP, A4, 40000, B4, 443);
        let ack = ipv4(A4, B4, TCP, &tcp(40000, 443, ACK));
        assert_eq!(f.run(Hook::FromEndpoint, &ack), TC_ACT_OK, "policy");
        assert_eq!(f.run(Hook::FromEndpoint, &ack), TC_ACT_OK, "conntrack, fill");
        assert_eq!(f.cache().len(), 1);
        f.rt.clear_slot(EGRESS_SLOT).unwrap();
        f.rt.ct_delete(&key).unwrap();
        // The other hook and the other direction: other views, misses, then no entry: the
        // pod-side address is B4, not the pod's (A4).
        assert_eq!(f.run(Hook::ToEndpoint, &ack), TC_ACT_SHOT, "the same packet at to_ep");
        let rev = ipv4(B4, A4, TCP, &tcp(443, 40000, ACK));
        assert_eq!(f.run(Hook::FromEndpoint, &rev), TC_ACT_SHOT, "the reverse at from_ep");
        assert_eq!(f.drops()[drop_reason::SPOOFED as usize], 2);
        assert_eq!(f.run(Hook::FromEndpoint, &ack), TC_ACT_OK, "the owner's view still hits");
        // C replays A's packet: the same view on another interface.
        let other = skb_ctx(other_ifindex);
        assert_eq!(f.run_at(&other, Hook::FromEndpoint, &ack), TC_ACT_SHOT, "C sends as A");
        assert_eq!(f.drops()[drop_reason::SPOOFED as usize], 3);
        assert_eq!(f.cache(), vec![], "the replay cleared the slot");
        assert_eq!(f.run(Hook::FromEndpoint, &ack), TC_ACT_SHOT, "A's next ACK misses");
        assert_eq!(f.drops()[drop_reason::NO_POLICY as usize], 1);
    });
}

/// A pod-to-pod flow on one node has four views (each hook, each direction): each fills its
/// own slot, so the hooks do not evict each other and all four hit.
#[test]
fn the_four_views_of_a_local_flow_hit_in_their_own_slots() {
    require_kernel!();
    let mut f = Fixture::new(&small_config());
    f.policy(EGRESS_SLOT, verdict::ALLOW, EGRESS_RULE);
    f.policy(INGRESS_SLOT, verdict::ALLOW, INGRESS_RULE);
    let key = key4(TCP, A4, 40000, B4, 80);
    let fwd = ipv4(A4, B4, TCP, &tcp(40000, 80, ACK));
    let rev = ipv4(B4, A4, TCP, &tcp(80, 40000, ACK));
    // A's egress and B's ingress allow (the one test interface plays both pods).
    assert_eq!(f.run(Hook::FromEndpoint, &fwd), TC_ACT_OK);
    f.be_pod(B4);
    assert_eq!(f.run(Hook::ToEndpoint, &fwd), TC_ACT_OK);
    assert_eq!(f.ct(&key).unwrap().approved, ct_approved::ORIG | ct_approved::RESP);
    let views = [(Hook::FromEndpoint, &fwd), (Hook::ToEndpoint, &fwd)];
    let views = [views[0], views[1], (Hook::FromEndpoint, &rev), (Hook::ToEndpoint, &rev)];
    for (hook, p) in views {
        assert_eq!(f.run(hook, p), TC_ACT_OK);
    }
    let mut slots: Vec<u32> = f.cache().iter().map(|&(_, i, _)| i).collect();
    slots.sort_unstable();
    let mut want: Vec<u32> = [(false, true), (true, true), (false, false), (true, false)]
        .iter()
        .map(|&(to_ep, lo)| slot_of(&key, to_ep, lo).0)
        .collect();
    want.sort_unstable();
    assert_eq!(slots, want);
    f.rt.clear_slot(EGRESS_SLOT).unwrap();
    f.rt.clear_slot(INGRESS_SLOT).unwrap();
    f.rt.ct_delete(&key).unwrap();
    for _ in 0..2 {
        for (hook, p) in views {
            assert_eq!(f.run(hook, p), TC_ACT_OK);
        }
    }
    assert_eq!(f.cache().len(), 4);
    assert_eq!(f.drops().iter().sum::<u64>(), 0);
}

// ---------------------------------------------------------------- benchmark

/// Kernel-measured ns/run (median of 5 runs of `repeat`) of an empty tc program, the
/// established fast path answered by the flow cache, the same with the cache off
/// (REFRESH = 0: the conntrack lookup), the first packet (miss + 10-rule policy + epilogue
/// with a conntrack insert, forced by a zero SYN timeout), and the floors: a program doing
/// one hash-map hit and nothing else, and one doing one per-CPU array lookup. Prints;
/// asserts only return codes and which path was measured.
#[test]
#[ignore = "benchmark: cargo test -p polc --release --test runtime_fastpath -- --ignored --nocapture"]
fn bench_fast_path_vs_empty_program() {
    require_kernel!();
    const REPEAT: u32 = 1_000_000;
    let empty =
        sys::prog_load("polc_t_empty", &[0xb7, 0, 0, 0, 0, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0])
            .expect("empty program");
    let median = |prog: std::os::fd::BorrowedFd<'_>, data: &[u8], ctx: &[u8], want: i32| {
        let mut ns: Vec<u32> = (0..5)
            .map(|_| {
                let run = TestRun { data, ctx: Some(ctx), repeat: REPEAT };
                let out = sys::prog_test_run(prog, &run).expect("test run");
                assert_eq!(out.retval as i32, want);
                out.duration_ns
            })
            .collect();
        ns.sort_unstable();
        ns[2]
    };
    let ack = ipv4(A4, B4, TCP, &tcp(40000, 443, ACK));
    let syn = ipv4(A4, B4, TCP, &tcp(40000, 443, SYN));
    let key = key4(TCP, A4, 40000, B4, 443);
    let established = |config: &RuntimeConfig| {
        let mut f = Fixture::new(config);
        let code = policy_program(&f.rt, f.counter.raw(), verdict::ALLOW, 1, 10);
        let prog = sys::prog_load("polc_t_10rules", &code).expect("policy");
        f.rt.set_slot(EGRESS_SLOT, prog.as_fd()).unwrap();
        f._progs.push(prog);
        // Policy (the epilogue starts the entry ESTABLISHED), then conntrack (fills).
        assert_eq!(f.run(Hook::FromEndpoint, &ack), TC_ACT_OK);
        assert_eq!(f.run(Hook::FromEndpoint, &ack), TC_ACT_OK);
        f
    };
    let ctx = skb_ctx(IFINDEX);

    let cached = established(&small_config());
    assert_eq!(cached.cache().len(), 1, "the flow is cached");
    let empty_ns = median(empty.as_fd(), &ack, &ctx, 0);
    let hit_ns = median(cached.rt.hook_fd(Hook::FromEndpoint).unwrap(), &ack, &ctx, TC_ACT_OK);
    assert_eq!(cached.policy_runs(), 1, "the benchmark measured the fast path");

    let uncached = established(&RuntimeConfig { flow_cache_ns: 0, ..small_config() });
    let ct_ns = median(uncached.rt.hook_fd(Hook::FromEndpoint).unwrap(), &ack, &ctx, TC_ACT_OK);
    assert_eq!(uncached.policy_runs(), 1);
    assert_eq!(uncached.cache(), vec![], "REFRESH = 0 caches nothing");
    assert!(uncached.ct(&key).is_some());
    // What the cache costs a packet it does not answer: a flow it never holds (a TCP ACK
    // on a SYN_SENT entry stays SYN_SENT), conntrack lookup after the slot probe, against
    // the same packet with the cache off.
    let unanswered = |config: &RuntimeConfig| {
        let mut f = Fixture::new(config);
        f.policy(EGRESS_SLOT, verdict::ALLOW, 1);
        assert_eq!(f.run(Hook::FromEndpoint, &syn), TC_ACT_OK);
        let ns = median(f.rt.hook_fd(Hook::FromEndpoint).unwrap(), &ack, &ctx, TC_ACT_OK);
        assert_eq!(f.ct(&key).expect("entry").state, ct_state::SYN_SENT);
        assert_eq!((f.policy_runs(), f.cache()), (1, vec![]), "conntrack answered");
        ns
    };
    let miss_on = unanswered(&small_config());
    let miss_off = unanswered(&RuntimeConfig { flow_cache_ns: 0, ..small_config() });

    let mut timeouts = polc_abi::CT_DEFAULT_TIMEOUTS_NS;
    timeouts[ct_timeout::TCP_SYN] = 0;
    let mut g = Fixture::new(&RuntimeConfig { ct_timeouts_ns: timeouts, ..small_config() });
    let code = policy_program(&g.rt, g.counter.raw(), verdict::ALLOW, 1, 10);
    let prog = sys::prog_load("polc_t_10rules", &code).expect("policy");
    g.rt.set_slot(EGRESS_SLOT, prog.as_fd()).unwrap();
    g._progs.push(prog);
    let first_ns = median(g.rt.hook_fd(Hook::FromEndpoint).unwrap(), &syn, &ctx, TC_ACT_OK);
    assert!(g.policy_runs() >= u64::from(REPEAT), "every run went through policy");
    // The floors: a program that does nothing but one lookup (a hit) of the given kind and
    // key size, its value size the conntrack entry's.
    let lookup_ns = |kind: MapKind, key_size: u32| {
        let map = sys::map_create(&MapSpec {
            kind,
            name: "polc_t_floor",
            key_size,
            value_size: 48,
            max_entries: 4096,
        })
        .expect("map");
        let key = vec![0u8; key_size as usize];
        if kind == MapKind::Hash {
            sys::map_update(map.as_fd(), &key, &[0u8; 48], sys::UpdateFlags::Any).expect("entry");
        }
        // The key: zeroed stack words, the lowest at fp - (key size rounded up to 8).
        let words = key_size.div_ceil(8) as i16;
        let mut a = Asm::new();
        for w in 0..words {
            a.push(Insn::st(Size::DW, Reg::FP, -8 * (words - w), 0));
        }
        a.push(Insn::ld_map_fd(Reg::R1, map.raw() as u32));
        a.push(Insn::mov64(Reg::R2, Reg::FP));
        a.push(Insn::alu64(AluOp::Add, Reg::R2, -8 * i32::from(words)));
        a.push(Insn::call(helper::MAP_LOOKUP_ELEM));
        a.push(Insn::mov64(Reg::R0, 0));
        a.push(Insn::exit());
        let code = a.assemble().expect("assembles").try_to_bytes().expect("encodes");
        let prog = sys::prog_load("polc_t_floor", &code).expect("floor program");
        median(prog.as_fd(), &ack, &ctx, 0)
    };
    let (floor40, floor16) = (lookup_ns(MapKind::Hash, 40), lookup_ns(MapKind::Hash, 16));
    let percpu = lookup_ns(MapKind::PerCpuArray, 4);
    let x = |ns: u32| f64::from(ns) / f64::from(empty_ns.max(1));
    eprintln!(
        "BPF_PROG_TEST_RUN, {REPEAT} runs x5, median ns/run: empty tc program {empty_ns}; \
         established fast path: flow cache hit {hit_ns} ({:.2}x), cache off (conntrack \
         lookup) {ct_ns} ({:.2}x); a flow the cache never holds (SYN_SENT): cache on {miss_on}, \
         off {miss_off}; first packet with a 10-rule policy {first_ns}; floors: \
         one hash lookup alone, 40-byte key {floor40} ({:.2}x), 16-byte key {floor16} \
         ({:.2}x); one per-CPU array lookup alone {percpu} ({:.2}x)",
        x(hit_ns),
        x(ct_ns),
        x(floor40),
        x(floor16),
        x(percpu),
    );
}

/// A program compiled by polc, loaded against the runtime's state and jump maps (as the
/// loader does): part 0 and everything that must stay open while it runs.
struct LoadedPolicy {
    entry: Fd,
    _keep: Vec<Fd>,
}

/// Loads program `index` of `compiled` with its own maps created and filled (IP sets,
/// named ports, counters, -O2 class tables, the parts array of a split -O0 program) and
/// `POLC_STATE`/`POLC_JUMP` taken from `rt`.
fn load_policy(rt: &Runtime, compiled: &Compiled, index: usize) -> LoadedPolicy {
    let p = &compiled.programs[index];
    let mut maps: Vec<(u32, Fd)> = Vec::new();
    for spec in compiled.program_map_specs(p) {
        if spec.handle == map::STATE || spec.handle == map::JUMP {
            continue;
        }
        let fd = sys::map_create(&MapSpec {
            kind: spec.kind,
            name: &spec.name,
            key_size: spec.key_size,
            value_size: spec.value_size,
            max_entries: spec.max_entries,
        })
        .unwrap_or_else(|e| panic!("map {}: {e}", spec.name));
        let entries: Vec<(Vec<u8>, Vec<u8>)> = match spec.handle {
            map::IPSETS => {
                compiled.ipset_entries.get(&p.family.number()).cloned().unwrap_or_default()
            }
            map::NAMED_PORTS => compiled.named_port_entries.clone(),
            h => p
                .local_maps
                .iter()
                .filter(|m| m.spec.handle == h)
                .flat_map(|m| m.entries.clone())
                .collect(),
        };
        for (k, v) in &entries {
            sys::map_update(fd.as_fd(), k, v, sys::UpdateFlags::Any).expect("fill map");
        }
        maps.push((spec.handle, fd));
    }
    let state = rt.state_map_fd().expect("state map").as_raw_fd() as u32;
    let jump = rt.jump_map_fd().expect("jump map").as_raw_fd() as u32;
    let mut parts = Vec::new();
    for (k, part) in p.parts.iter().enumerate() {
        let bytes = patch_map_handles(part, |h| match h {
            map::STATE => Some(state),
            map::JUMP => Some(jump),
            h => maps.iter().find(|(mh, _)| *mh == h).map(|(_, fd)| fd.raw() as u32),
        })
        .expect("patch map handles");
        let fd =
            sys::prog_load("polc_t_compiled", &bytes).unwrap_or_else(|e| panic!("part {k}: {e}"));
        if let Some((_, parts_map)) = maps.iter().find(|(h, _)| *h == map::PARTS) {
            sys::prog_array_set(parts_map.as_fd(), k as u32, fd.as_fd()).expect("parts array");
        }
        parts.push(fd);
    }
    let entry = parts.remove(0);
    LoadedPolicy {
        entry,
        _keep: parts.into_iter().chain(maps.into_iter().map(|(_, fd)| fd)).collect(),
    }
}

/// Median of 5 kernel-timed runs of `repeat`, the repeat count chosen so one run of the
/// slowest programs (-O0, 10k rules) stays near 0.3 s. Returns (ns, repeat, retval).
fn first_packet_ns(prog: std::os::fd::BorrowedFd<'_>, data: &[u8], ctx: &[u8]) -> (u32, u32, i32) {
    let probe = TestRun { data, ctx: Some(ctx), repeat: 100 };
    let per_run = sys::prog_test_run(prog, &probe).expect("test run").duration_ns.max(1);
    let repeat = (300_000_000 / per_run).clamp(10_000, 1_000_000);
    let mut retval = 0;
    let mut ns: Vec<u32> = (0..5)
        .map(|_| {
            let out = sys::prog_test_run(prog, &TestRun { data, ctx: Some(ctx), repeat })
                .expect("test run");
            retval = out.retval as i32;
            out.duration_ns
        })
        .collect();
    ns.sort_unstable();
    (ns[2], repeat, retval)
}

/// First packet through the whole runtime with policies compiled by polc: conntrack miss
/// (every timeout 0, so each run misses), endpoint lookup, tail call into the compiled
/// ingress program of `polc synth`'s target pod (its parts too, for a split -O0 program),
/// epilogue (a conntrack write on allow). 10 and 10,000 rules, at -O2 and -O0; the four
/// flows of `polc bench`; at both hooks. Prints; asserts that policy ran for every packet
/// and that both hooks reached the same verdict.
#[test]
#[ignore = "benchmark: cargo test -p polc --release --test runtime_fastpath -- --ignored --nocapture"]
fn bench_first_packet_with_compiled_policies() {
    require_kernel!();
    let target: [u8; 4] = synth::TARGET_IP.parse::<std::net::Ipv4Addr>().expect("ip").octets();
    let flows: [(&str, u16, Vec<u8>); 4] = [
        ("pod TCP 8080", 8080, ipv4([10, 200, 1, 1], target, TCP, &tcp(40000, 8080, SYN))),
        ("pod UDP 5353", 5353, ipv4([10, 200, 1, 7], target, UDP, &udp(40001, 5353, b"q"))),
        ("CIDR TCP 3050", 3050, ipv4([172, 16, 5, 9], target, TCP, &tcp(40002, 3050, SYN))),
        ("unknown SCTP 99", 99, ipv4([10, 9, 9, 9], target, SCTP, &sctp(40003, 99))),
    ];
    let empty =
        sys::prog_load("polc_t_empty", &[0xb7, 0, 0, 0, 0, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0])
            .expect("empty program");
    let ctx = skb_ctx(IFINDEX);
    let (empty_ns, _, _) = first_packet_ns(empty.as_fd(), &flows[0].2, &ctx);
    eprintln!(
        "first packet (miss + compiled ingress policy + epilogue), ns/run at the to-endpoint / \
         from-endpoint hook, median of 5; empty tc program {empty_ns}"
    );
    for rules in [10usize, 10_000] {
        let yaml =
            synth::cluster_yaml(synth::Spec { rules, pods: 50, seed: 42, ..Default::default() });
        let cluster = polc::frontend::load_str("synth.yaml", &yaml).expect("synthetic cluster");
        let ir = polc::lower::lower(&cluster);
        for opt_level in [2u8, 0] {
            let compiled = compile_ir_with(ir.clone(), Options { opt_level, ..Options::default() })
                .expect("compiles");
            let index = compiled
                .program_index(synth::TARGET, polc_ir::Direction::Ingress, polc_ir::Family::V4)
                .expect("the target's ingress program");
            let p = &compiled.programs[index];
            let mut f = Fixture::new(&RuntimeConfig {
                ct_max_entries: 4096,
                ct_timeouts_ns: [0; ct_timeout::COUNT],
                ..RuntimeConfig::default()
            });
            let policy = load_policy(&f.rt, &compiled, index);
            f.rt.set_slot(INGRESS_SLOT, policy.entry.as_fd()).expect("slot");
            // The same program in the egress slot too (generated programs read neither the
            // direction nor the endpoint): the from-endpoint hook's miss path adds the
            // service frontend lookup (a miss: no services here).
            f.rt.set_slot(EGRESS_SLOT, policy.entry.as_fd()).expect("slot");
            let mut cells = Vec::new();
            for (name, dport, packet) in &flows {
                let mut hooks = Vec::new();
                let mut verdicts = Vec::new();
                // The pod's side must be its own address (the runtime's anti-spoofing): the
                // target at its to-endpoint hook, the packet's source at the from-endpoint one.
                let source: [u8; 4] = packet[26..30].try_into().expect("IPv4 source");
                for (hook, own) in [(Hook::ToEndpoint, target), (Hook::FromEndpoint, source)] {
                    f.be_pod(own);
                    let (ns, repeat, retval) =
                        first_packet_ns(f.rt.hook_fd(hook).unwrap(), packet, &ctx);
                    let st = f.last_state();
                    // The miss filled the state with this flow; its policy reached the epilogue.
                    assert_eq!((st.dst_port, st.stage), (*dport, stage::EPILOGUE), "{name}");
                    hooks.push(format!("{ns}"));
                    verdicts.push((if retval == TC_ACT_OK { "allow" } else { "deny" }, repeat));
                }
                assert_eq!(verdicts[0].0, verdicts[1].0, "{name}: both hooks decide alike");
                cells.push(format!(
                    "{name}: {} ({}, x{})",
                    hooks.join("/"),
                    verdicts[0].0,
                    verdicts[0].1
                ));
            }
            f._progs.push(policy.entry);
            eprintln!(
                "{rules:>6} rules -O{opt_level} (generated at -O{}, {} parts, {} insns, worst case {} insns / {} lookups): {}",
                p.opt_level,
                p.parts.len(),
                p.insns(),
                p.worst_case.insns,
                p.worst_case.map_lookups,
                cells.join(", ")
            );
        }
    }
}
