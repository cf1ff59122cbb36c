//! Service NAT in the tc runtime (BPF_PROG_TEST_RUN with crafted packets): a client's first
//! packet to a ClusterIP:port is rewritten to a backend before its egress policy runs (the
//! policy sees the backend), conntrack records the translation, later packets get the same
//! rewrite on the fast path, replies are rewritten back to the service at the client's
//! to-endpoint hook, ClientIP affinity, and a service without backends drops. The same for
//! IPv6 (with and without extension headers) and for SCTP in both families. Checksums of
//! every rewritten packet (IPv4 header, TCP/UDP with the v4 or v6 pseudo-header, SCTP's
//! CRC32c) are verified by recomputing them here.
//!
//! Kernel tests: they print `SKIP: ...` without bpf(2) rights and fail instead with
//! `POLC_REQUIRE_KERNEL=1`. The benchmark is `#[ignore]`d; run it with
//! `cargo test -p polc --release --test runtime_nat -- --ignored --nocapture`.

use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd};

use polc::asm::{helper, AluOp, Asm, Cond, Insn, Reg, Size};
use polc_abi::{
    ct_approved, ct_nat, ct_state, ct_timeout, drop_reason, family, nat_flags, stage, verdict,
    CtEntry, CtKey, Endpoint, FlowState, NatBackend, NatFrontendKey, NatService, SLOT_EPILOGUE,
    TC_ACT_OK, TC_ACT_SHOT,
};
use polc_loader::sys::{self, Fd, MapKind, MapSpec, TestRun};
use polc_loader::{require_kernel, Hook, Runtime, RuntimeConfig};

// ---------------------------------------------------------------- packets and checksums

const TCP: u8 = 6;
const UDP: u8 = 17;
const SCTP: u8 = 132;
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const FIN: u8 = 0x01;

const CLIENT: [u8; 4] = [10, 0, 0, 1];
const VIP: [u8; 4] = [10, 96, 0, 10];
const BACKENDS: [[u8; 4]; 3] = [[10, 0, 1, 1], [10, 0, 1, 2], [10, 0, 1, 3]];
const SVC_PORT: u16 = 80;
const TARGET_PORT: u16 = 8080;

/// One's-complement sum of `data` (big-endian 16-bit words) added to `acc`.
fn sum16(data: &[u8], mut acc: u32) -> u32 {
    for c in data.chunks(2) {
        acc += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

fn tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    t.extend_from_slice(b"hello");
    t
}

fn udp(sport: u16, dport: u16) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&(8u16 + 5).to_be_bytes());
    t.extend_from_slice(&[0, 0]);
    t.extend_from_slice(b"query");
    t
}

fn csum_at(proto: u8) -> usize {
    if proto == TCP {
        16
    } else {
        6
    }
}

/// Ethernet + IPv4 + `l4` with correct IP and L4 checksums (`l4_csum: false` leaves a UDP
/// checksum of 0, "none").
fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, l4: &[u8], l4_csum: bool) -> Vec<u8> {
    let mut l4 = l4.to_vec();
    if l4_csum {
        let acc = sum16(&dst, sum16(&src, 0)) + u32::from(proto) + l4.len() as u32;
        let c = fold(sum16(&l4, acc));
        let at = csum_at(proto);
        l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&u16::try_from(20 + l4.len()).unwrap().to_be_bytes());
    h.extend_from_slice(&[0, 1, 0, 0, 64, proto, 0, 0]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    let c = fold(sum16(&h, 0));
    h[10..12].copy_from_slice(&c.to_be_bytes());
    let mut p = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01, 0x08, 0x00];
    p.extend_from_slice(&h);
    p.extend_from_slice(&l4);
    p
}

/// The parts of a rewritten packet a test checks, after verifying both checksums.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    src: [u8; 4],
    sport: u16,
    dst: [u8; 4],
    dport: u16,
}

/// Parses an Ethernet/IPv4/TCP-or-UDP packet and asserts its IP header checksum and L4
/// checksum (pseudo-header included) are valid; returns its ends.
fn checked(p: &[u8]) -> Seen {
    let ip = &p[14..34];
    assert_eq!(fold(sum16(ip, 0)), 0, "IPv4 header checksum of {p:02x?}");
    let proto = ip[9];
    let src: [u8; 4] = ip[12..16].try_into().unwrap();
    let dst: [u8; 4] = ip[16..20].try_into().unwrap();
    let l4 = &p[34..];
    let at = csum_at(proto);
    if !(proto == UDP && l4[at..at + 2] == [0, 0]) {
        let acc = sum16(&dst, sum16(&src, 0)) + u32::from(proto) + l4.len() as u32;
        assert_eq!(fold(sum16(l4, acc)), 0, "L4 checksum of {p:02x?}");
    }
    Seen {
        src,
        sport: u16::from_be_bytes([l4[0], l4[1]]),
        dst,
        dport: u16::from_be_bytes([l4[2], l4[3]]),
    }
}

fn v4(a: [u8; 4]) -> [u8; 16] {
    let mut x = [0u8; 16];
    x[..4].copy_from_slice(&a);
    x
}

fn key4(proto: u8, src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> CtKey {
    CtKey::new(family::IPV4, proto, &v4(src), sport, &v4(dst), dport).0
}

// ---------------------------------------------------------------- kernel fixture

const IFINDEX: u32 = 1;
const EGRESS_SLOT: u32 = 5;
const INGRESS_SLOT: u32 = 3;
const EGRESS_RULE: i32 = 500;
const SERVICE_ID: u32 = 42;

fn pin_to_cpu0() {
    // SAFETY: a zeroed cpu_set_t with bit 0 set, for the calling thread (pid 0).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        let rc = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(rc, 0, "sched_setaffinity: {}", std::io::Error::last_os_error());
    }
}

/// A runtime with the client endpoint on lo (egress policy allows, counted), no ingress
/// policy (replies must ride conntrack).
struct Fixture {
    rt: Runtime,
    counter: Fd,
    ctx: Vec<u8>,
    progs: Vec<Fd>,
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
        let mut ep = Endpoint {
            endpoint_id: 7,
            ingress_slot: INGRESS_SLOT,
            egress_slot: EGRESS_SLOT,
            flags: 0,
            ingress_slot_v6: INGRESS_SLOT,
            egress_slot_v6: EGRESS_SLOT,
            ..Endpoint::default()
        };
        ep.set_address(IpAddr::from(CLIENT));
        ep.set_address(IpAddr::from(CLIENT6));
        rt.set_endpoint(IFINDEX, &ep).expect("endpoint");
        let mut ctx = vec![0u8; 48];
        ctx[40..44].copy_from_slice(&IFINDEX.to_ne_bytes());
        let mut f = Fixture { rt, counter, ctx, progs: Vec::new() };
        f.allow_egress(0);
        f
    }

    fn allow_egress(&mut self, extra_rules: u16) {
        self.egress_policy(verdict::ALLOW, extra_rules);
    }

    fn egress_policy(&mut self, v: u32, extra_rules: u16) {
        let code = policy_program(&self.rt, self.counter.raw(), v, extra_rules);
        let prog = sys::prog_load("polc_t_policy", &code).unwrap_or_else(|e| panic!("{e}"));
        self.rt.set_slot(EGRESS_SLOT, prog.as_fd()).expect("set slot");
        self.progs.push(prog);
    }

    /// The IPv4 service on `VIP`.
    fn service(&self, proto: u8, backends: &[[u8; 4]], flags: u32) {
        let backends: Vec<IpAddr> = backends.iter().map(|a| IpAddr::from(*a)).collect();
        self.service_at(IpAddr::from(VIP), proto, &backends, flags);
    }

    /// A service on `vip` (either family) with `backends` of the same family.
    fn service_at(&self, vip: IpAddr, proto: u8, backends: &[IpAddr], flags: u32) {
        let fe =
            NatFrontendKey { addr: a16(vip), port: SVC_PORT, protocol: proto, family: fam(vip) };
        let svc = NatService {
            service_id: SERVICE_ID,
            backend_count: 0,
            flags,
            affinity_timeout_s: 10800,
        };
        let bes: Vec<NatBackend> = backends
            .iter()
            .map(|a| NatBackend { addr: a16(*a), port: TARGET_PORT, _pad: 0 })
            .collect();
        self.rt.set_service(&fe, &svc, &bes).expect("set service");
    }

    /// Runs `hook` on `packet`: the return code and the packet as it leaves.
    fn run(&self, hook: Hook, packet: &[u8]) -> (i32, Vec<u8>) {
        let run = TestRun { data: packet, ctx: Some(&self.ctx), repeat: 1 };
        let out = self.rt.test_run_hook(hook, &run).expect("test run");
        (out.retval as i32, out.data_out)
    }

    fn policy_runs(&self) -> u64 {
        let v = sys::map_lookup(self.counter.as_fd(), &0u32.to_ne_bytes()).unwrap().unwrap();
        u64::from_ne_bytes(v.try_into().unwrap())
    }

    fn last_state(&self) -> FlowState {
        let states = self.rt.flow_states().expect("states");
        let touched: Vec<_> = states.into_iter().filter(|s| s.stage != stage::NONE).collect();
        assert_eq!(touched.len(), 1, "one CPU ran the tests: {touched:?}");
        touched[0]
    }

    fn ct(&self, key: &CtKey) -> CtEntry {
        self.rt.ct_lookup(key).expect("ct lookup").unwrap_or_else(|| panic!("no entry {key:?}"))
    }
}

fn off(field: usize) -> i16 {
    i16::try_from(field).expect("small offset")
}

/// A policy program like the compiler's: look up the FlowState, bump the test counter, run
/// `extra_rules` never-matching port comparisons, write verdict `v`, rule and stage,
/// tail-call the epilogue; drop if anything fails.
fn policy_program(rt: &Runtime, counter_fd: i32, v: u32, extra_rules: u16) -> Vec<u8> {
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
        a.jump_if(Cond::Eq, Reg::R1, 10_000 + i32::from(i), decide);
    }
    a.bind(decide);
    a.push(Insn::st(Size::W, Reg::R7, off(polc_abi::FLOW_VERDICT), v as i32));
    a.push(Insn::st(Size::W, Reg::R7, off(polc_abi::FLOW_RULE_ID), EGRESS_RULE));
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

fn small_config() -> RuntimeConfig {
    RuntimeConfig { ct_max_entries: 4096, ..RuntimeConfig::default() }
}

// ---------------------------------------------------------------- tests

/// The whole life of a translated flow for one protocol: first packet (DNAT before policy,
/// entries recorded), a later packet (fast path, same DNAT, no policy), a reply (reverse NAT
/// at the client's to-endpoint hook, no ingress policy exists).
fn translated_both_ways(proto: u8, l4_csum: bool) {
    let f = Fixture::new(&small_config());
    f.service(proto, &BACKENDS[1..2], 0);
    let backend = BACKENDS[1];
    let l4 = |sport, dport, flags| {
        if proto == TCP {
            tcp(sport, dport, flags)
        } else {
            udp(sport, dport)
        }
    };

    let (rc, out) =
        f.run(Hook::FromEndpoint, &ipv4(CLIENT, VIP, proto, &l4(40000, 80, SYN), l4_csum));
    assert_eq!(rc, TC_ACT_OK);
    let to_backend = Seen { src: CLIENT, sport: 40000, dst: backend, dport: TARGET_PORT };
    assert_eq!(checked(&out), to_backend);
    if !l4_csum {
        assert_eq!(out[34 + 6..34 + 8], [0, 0], "a UDP checksum of 0 stays 0");
    }
    assert_eq!(f.policy_runs(), 1);
    let st = f.last_state();
    assert_eq!((st.dst_addr, st.dst_port, st.ct_dst_port), (v4(backend), TARGET_PORT, TARGET_PORT));
    assert_eq!((st.src_addr, st.src_port), (v4(CLIENT), 40000));

    let post = f.ct(&key4(proto, CLIENT, 40000, backend, TARGET_PORT));
    assert_eq!(post.nat_flags, ct_nat::REV_NAT);
    assert_eq!((post.nat_addr, post.nat_port), (v4(VIP), SVC_PORT));
    assert_eq!(post.approved, ct_approved::ORIG);
    assert_eq!(post.orig_rule, EGRESS_RULE as u32);
    let pre = f.ct(&key4(proto, CLIENT, 40000, VIP, SVC_PORT));
    assert_eq!(pre.nat_flags, ct_nat::DNAT);
    assert_eq!((pre.nat_addr, pre.nat_port), (v4(backend), TARGET_PORT));
    assert_eq!(pre.approved, ct_approved::ORIG);

    // No policy from here on: the fast path must carry the flow.
    assert!(f.rt.clear_slot(EGRESS_SLOT).unwrap());
    let (rc, out) =
        f.run(Hook::FromEndpoint, &ipv4(CLIENT, VIP, proto, &l4(40000, 80, ACK), l4_csum));
    assert_eq!(rc, TC_ACT_OK);
    assert_eq!(checked(&out), to_backend);
    assert_eq!(f.policy_runs(), 1, "the second packet took the fast path");

    let reply = ipv4(backend, CLIENT, proto, &l4(TARGET_PORT, 40000, SYN | ACK), l4_csum);
    let (rc, out) = f.run(Hook::ToEndpoint, &reply);
    assert_eq!(rc, TC_ACT_OK, "the reply rides conntrack (the client has no ingress policy)");
    assert_eq!(checked(&out), Seen { src: VIP, sport: SVC_PORT, dst: CLIENT, dport: 40000 });
    let dropped: u64 = f.rt.drop_counts().unwrap().iter().sum();
    assert_eq!(dropped, 0);
}

#[test]
fn tcp_to_a_cluster_ip_is_translated_to_the_backend_and_replies_back() {
    require_kernel!();
    translated_both_ways(TCP, true);
}

#[test]
fn udp_to_a_cluster_ip_is_translated_with_and_without_a_checksum() {
    require_kernel!();
    translated_both_ways(UDP, true);
    translated_both_ways(UDP, false);
}

/// Each NAT entry sees one side's packets at the client's node; both still reach
/// ESTABLISHED (else they would expire after the 20 s handshake timeout).
#[test]
fn translated_tcp_entries_follow_the_handshake() {
    require_kernel!();
    let f = Fixture::new(&small_config());
    f.service(TCP, &BACKENDS[..1], 0);
    let be = BACKENDS[0];
    let pre = key4(TCP, CLIENT, 40000, VIP, SVC_PORT);
    let post = key4(TCP, CLIENT, 40000, be, TARGET_PORT);
    let states = |f: &Fixture| (f.ct(&pre).state, f.ct(&post).state);
    let out = |sport, dport, flags| ipv4(CLIENT, VIP, TCP, &tcp(sport, dport, flags), true);
    let back = |flags| ipv4(be, CLIENT, TCP, &tcp(TARGET_PORT, 40000, flags), true);
    assert_eq!(f.run(Hook::FromEndpoint, &out(40000, 80, SYN)).0, TC_ACT_OK);
    assert_eq!(states(&f), (ct_state::SYN_SENT, ct_state::SYN_SENT));
    assert_eq!(f.run(Hook::ToEndpoint, &back(SYN | ACK)).0, TC_ACT_OK);
    assert_eq!(states(&f), (ct_state::SYN_SENT, ct_state::SYN_RECV));
    assert_eq!(f.run(Hook::FromEndpoint, &out(40000, 80, ACK)).0, TC_ACT_OK);
    assert_eq!(states(&f), (ct_state::ESTABLISHED, ct_state::SYN_RECV));
    assert_eq!(f.run(Hook::ToEndpoint, &back(ACK)).0, TC_ACT_OK);
    assert_eq!(states(&f), (ct_state::ESTABLISHED, ct_state::ESTABLISHED));
    assert_eq!(f.run(Hook::FromEndpoint, &out(40000, 80, FIN | ACK)).0, TC_ACT_OK);
    assert_eq!(states(&f), (ct_state::FIN_WAIT, ct_state::ESTABLISHED));
    assert_eq!(f.policy_runs(), 1);
}

/// A flow the client's egress policy denies: dropped, and the NAT entries written before
/// policy stay unapproved, so the next packet is evaluated again instead of riding them.
#[test]
fn a_denied_translated_flow_stays_denied() {
    require_kernel!();
    let mut f = Fixture::new(&small_config());
    f.egress_policy(verdict::DENY, 0);
    f.service(TCP, &BACKENDS[..1], 0);
    for (i, flags) in [SYN, ACK].into_iter().enumerate() {
        let p = ipv4(CLIENT, VIP, TCP, &tcp(40000, 80, flags), true);
        assert_eq!(f.run(Hook::FromEndpoint, &p).0, TC_ACT_SHOT);
        assert_eq!(f.policy_runs(), i as u64 + 1, "every packet went through policy");
    }
    assert_eq!(f.last_state().dst_addr, v4(BACKENDS[0]), "policy saw the backend");
    assert_eq!(f.ct(&key4(TCP, CLIENT, 40000, VIP, SVC_PORT)).approved, 0);
    assert_eq!(f.ct(&key4(TCP, CLIENT, 40000, BACKENDS[0], TARGET_PORT)).approved, 0);
    // A reply-looking packet from the backend does not ride the unapproved entry either.
    let reply = ipv4(BACKENDS[0], CLIENT, TCP, &tcp(TARGET_PORT, 40000, SYN | ACK), true);
    assert_eq!(f.run(Hook::ToEndpoint, &reply).0, TC_ACT_SHOT, "no ingress policy: drop");
    assert_eq!(f.rt.drop_counts().unwrap()[drop_reason::POLICY_DENY as usize], 2);
}

/// A packet to a frontend from an address that is not the client pod's own is dropped as
/// spoofed before NAT: not rewritten, no conntrack or affinity entries, no policy.
#[test]
fn a_spoofed_packet_to_a_frontend_is_dropped_before_translation() {
    require_kernel!();
    let f = Fixture::new(&small_config());
    f.service(TCP, &BACKENDS[..1], nat_flags::AFFINITY_CLIENT_IP);
    let other = [10, 0, 0, 9];
    let p = ipv4(other, VIP, TCP, &tcp(40000, 80, SYN), true);
    let (rc, out) = f.run(Hook::FromEndpoint, &p);
    assert_eq!(rc, TC_ACT_SHOT);
    assert_eq!(out, p, "not rewritten");
    assert_eq!(f.rt.drop_counts().unwrap()[drop_reason::SPOOFED as usize], 1);
    assert_eq!(f.policy_runs(), 0);
    assert!(f.rt.ct_entries().unwrap().is_empty(), "no NAT entries");
    assert_eq!(f.rt.affinity(v4(other), SERVICE_ID).unwrap(), None);
    // The pod's own address is translated as usual.
    let (rc, out) = f.run(Hook::FromEndpoint, &ipv4(CLIENT, VIP, TCP, &tcp(40000, 80, SYN), true));
    assert_eq!(rc, TC_ACT_OK);
    assert_eq!(checked(&out).dst, BACKENDS[0]);
}

/// Traffic to addresses or ports that are not a frontend is not touched.
#[test]
fn packets_to_non_frontends_are_not_rewritten() {
    require_kernel!();
    let f = Fixture::new(&small_config());
    f.service(TCP, &BACKENDS, 0);
    for (dst, dport) in [(VIP, 81), (BACKENDS[0], 80)] {
        let p = ipv4(CLIENT, dst, TCP, &tcp(40001, dport, SYN), true);
        let (rc, out) = f.run(Hook::FromEndpoint, &p);
        assert_eq!(rc, TC_ACT_OK);
        assert_eq!(out, p);
        assert_eq!(f.ct(&key4(TCP, CLIENT, 40001, dst, dport)).nat_flags, 0);
    }
    let p = ipv4(CLIENT, VIP, UDP, &udp(40001, 80), true);
    assert_eq!(f.run(Hook::FromEndpoint, &p).1, p, "the frontend is TCP only");
}

/// Which backend each of `flows` source ports lands on.
fn chosen_backends(f: &Fixture, ports: std::ops::Range<u16>) -> Vec<[u8; 4]> {
    ports
        .map(|sport| {
            let (rc, out) =
                f.run(Hook::FromEndpoint, &ipv4(CLIENT, VIP, TCP, &tcp(sport, 80, SYN), true));
            assert_eq!(rc, TC_ACT_OK);
            checked(&out).dst
        })
        .collect()
}

#[test]
fn client_ip_affinity_keeps_a_client_on_one_backend() {
    require_kernel!();
    // Without affinity, flows of one client spread over the backends...
    let f = Fixture::new(&small_config());
    f.service(TCP, &BACKENDS, 0);
    let spread = chosen_backends(&f, 40000..40032);
    assert!(spread.iter().all(|b| BACKENDS.contains(b)));
    assert!(spread.iter().any(|b| *b != spread[0]), "hashing spreads flows: {spread:?}");
    assert!(f.rt.affinity(v4(CLIENT), SERVICE_ID).unwrap().is_none());

    // ...with ClientIP affinity they all go where the first one went.
    let g = Fixture::new(&small_config());
    g.service(TCP, &BACKENDS, nat_flags::AFFINITY_CLIENT_IP);
    let sticky = chosen_backends(&g, 40000..40032);
    assert!(sticky.iter().all(|b| *b == sticky[0]), "one backend: {sticky:?}");
    let aff = g.rt.affinity(v4(CLIENT), SERVICE_ID).unwrap().expect("affinity entry");
    assert_eq!(BACKENDS[aff.ordinal as usize], sticky[0]);
}

/// Flows of one client spread over every backend for any backend count (a hash whose low
/// bits ignored the source port once sent all of a client's flows to one of 2 backends).
#[test]
fn one_clients_flows_spread_evenly_over_two_three_and_four_backends() {
    require_kernel!();
    let all = [[10, 0, 1, 1], [10, 0, 1, 2], [10, 0, 1, 3], [10, 0, 1, 4]];
    for n in 2..=4 {
        let f = Fixture::new(&small_config());
        f.service(TCP, &all[..n], 0);
        let chosen = chosen_backends(&f, 40000..40240);
        for b in &all[..n] {
            let hits = chosen.iter().filter(|c| *c == b).count();
            // A fair share is 240/n; a third of it is far outside chance for a sound hash.
            assert!(hits >= 240 / n / 3, "{n} backends: {b:?} got {hits} of 240 flows");
        }
    }
}

#[test]
fn a_service_without_backends_drops_and_counts() {
    require_kernel!();
    let f = Fixture::new(&small_config());
    f.service(TCP, &[], 0);
    let (rc, _) = f.run(Hook::FromEndpoint, &ipv4(CLIENT, VIP, TCP, &tcp(40000, 80, SYN), true));
    assert_eq!(rc, TC_ACT_SHOT);
    assert_eq!(f.rt.drop_counts().unwrap()[drop_reason::NO_BACKEND as usize], 1);
    assert_eq!(f.policy_runs(), 0, "dropped before policy");
    // Backends appear: the same packet is translated.
    f.service(TCP, &BACKENDS[..1], 0);
    let (rc, out) = f.run(Hook::FromEndpoint, &ipv4(CLIENT, VIP, TCP, &tcp(40000, 80, SYN), true));
    assert_eq!(rc, TC_ACT_OK);
    assert_eq!(checked(&out).dst, BACKENDS[0]);
    // Shrinking the set deletes the ordinals beyond it.
    f.service(TCP, &BACKENDS, 0);
    f.service(TCP, &BACKENDS[..1], 0);
    let fe = NatFrontendKey { addr: v4(VIP), port: SVC_PORT, protocol: TCP, family: 4 };
    assert_eq!(f.rt.service(&fe).unwrap().map(|s| s.backend_count), Some(1));
    assert!(f.rt.remove_service(&fe).unwrap());
    assert!(!f.rt.remove_service(&fe).unwrap());
}

/// First packet (conntrack miss + 10-rule policy + epilogue, forced by a zero SYN timeout)
/// with and without service NAT, and the established fast path with and without it.
///
/// A test run with `repeat` reuses one skb, so after the first run a translated packet
/// already carries the backend: NAT cannot be measured with `repeat`. Each sample here is
/// one run (`repeat = 1`, the kernel's own timing of that run, which includes its timer
/// overhead); the median of many, the same method for every case.
#[test]
#[ignore = "benchmark: cargo test -p polc --release --test runtime_nat -- --ignored --nocapture"]
fn bench_nat_first_packet_and_fast_path() {
    require_kernel!();
    const SAMPLES: usize = 50_001;
    let median = |f: &Fixture, data: &[u8], want_dst: &[u8]| {
        let mut ns: Vec<u32> = (0..SAMPLES)
            .map(|_| {
                let run = TestRun { data, ctx: Some(&f.ctx), repeat: 1 };
                let out = f.rt.test_run_hook(Hook::FromEndpoint, &run).expect("test run");
                assert_eq!(out.retval as i32, TC_ACT_OK);
                // The destination address: IPv4 at 30..34, IPv6 at 38..54.
                let at = if want_dst.len() == 4 { 30 } else { 38 };
                assert_eq!(out.data_out[at..at + want_dst.len()], *want_dst);
                out.duration_ns
            })
            .collect();
        ns.sort_unstable();
        ns[SAMPLES / 2]
    };
    let mut timeouts = polc_abi::CT_DEFAULT_TIMEOUTS_NS;
    timeouts[ct_timeout::TCP_SYN] = 0;
    let miss =
        RuntimeConfig { ct_max_entries: 4096, ct_timeouts_ns: timeouts, ..Default::default() };
    let backend = BACKENDS[0];
    let to_vip = ipv4(CLIENT, VIP, TCP, &tcp(40000, 80, SYN), true);
    let to_pod = ipv4(CLIENT, backend, TCP, &tcp(40001, 8080, SYN), true);
    let ack_vip = ipv4(CLIENT, VIP, TCP, &tcp(40000, 80, ACK), true);
    let ack_pod = ipv4(CLIENT, backend, TCP, &tcp(40001, 8080, ACK), true);

    let mut g = Fixture::new(&miss);
    g.allow_egress(10);
    g.service(TCP, &BACKENDS[..1], 0);
    let first_nat = median(&g, &to_vip, &backend);
    let first_plain = median(&g, &to_pod, &backend);
    assert!(g.policy_runs() >= 2 * SAMPLES as u64, "every first packet went through policy");

    let mut h = Fixture::new(&small_config());
    h.allow_egress(10);
    h.service(TCP, &BACKENDS[..1], 0);
    assert_eq!(h.run(Hook::FromEndpoint, &ack_vip).0, TC_ACT_OK);
    assert_eq!(h.run(Hook::FromEndpoint, &ack_pod).0, TC_ACT_OK);
    let runs = h.policy_runs();
    let fast_nat = median(&h, &ack_vip, &backend);
    let fast_plain = median(&h, &ack_pod, &backend);
    assert_eq!(h.policy_runs(), runs, "the benchmark measured the fast path");
    eprintln!(
        "IPv4: BPF_PROG_TEST_RUN, median of {SAMPLES} single runs, ns/run: first packet with \
         a 10-rule policy: to a ClusterIP (NAT) {first_nat}, to a pod {first_plain}; \
         established: via NAT {fast_nat}, to a pod {fast_plain}"
    );

    // The same four for IPv6.
    let be6 = backend6(1);
    let v6 = |dst: [u8; 16], sport: u16, dport: u16, flags: u8| {
        ipv6(CLIENT6, dst, TCP, &tcp(sport, dport, flags), false)
    };
    g.service_at(vip6(), TCP, &[IpAddr::from(be6)], 0);
    let first_nat = median(&g, &v6(VIP6, 40000, 80, SYN), &be6);
    let first_plain = median(&g, &v6(be6, 40001, 8080, SYN), &be6);
    h.service_at(vip6(), TCP, &[IpAddr::from(be6)], 0);
    let (ack_vip, ack_pod) = (v6(VIP6, 40000, 80, ACK), v6(be6, 40001, 8080, ACK));
    assert_eq!(h.run(Hook::FromEndpoint, &ack_vip).0, TC_ACT_OK);
    assert_eq!(h.run(Hook::FromEndpoint, &ack_pod).0, TC_ACT_OK);
    let runs = h.policy_runs();
    let fast_nat = median(&h, &ack_vip, &be6);
    let fast_plain = median(&h, &ack_pod, &be6);
    assert_eq!(h.policy_runs(), runs, "the benchmark measured the fast path");
    eprintln!(
        "IPv6: BPF_PROG_TEST_RUN, median of {SAMPLES} single runs, ns/run: first packet with \
         a 10-rule policy: to a ClusterIP (NAT) {first_nat}, to a pod {first_plain}; \
         established: via NAT {fast_nat}, to a pod {fast_plain}"
    );
}

// ---------------------------------------------------------------- IPv6 and SCTP

const CLIENT6: [u8; 16] = [0xfd, 0x77, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const VIP6: [u8; 16] = [0xfd, 0x96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10];

fn backend6(n: u8) -> [u8; 16] {
    [0xfd, 0x77, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, n]
}

/// The 16-byte map form of an address (IPv4 in bytes 0..4).
fn a16(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(v) => v4(v.octets()),
        IpAddr::V6(v) => v.octets(),
    }
}

fn fam(a: IpAddr) -> u8 {
    if a.is_ipv4() {
        family::IPV4
    } else {
        family::IPV6
    }
}

/// Bit-by-bit CRC32c (init and final XOR all ones), as SCTP uses it.
fn crc32c(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = (c >> 1) ^ (0x82f6_3b78 & 0u32.wrapping_sub(c & 1));
        }
    }
    !c
}

/// An SCTP packet: common header (ports, verification tag, CRC32c) and one DATA chunk.
fn sctp(sport: u16, dport: u16) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0]);
    // DATA chunk: type 0, flags B|E, length 16 + 5, TSN, stream, SSN, PPID, "hello" + pad.
    t.extend_from_slice(&[0, 3, 0, 21, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
    t.extend_from_slice(b"hello\0\0\0");
    t
}

fn l4_for(proto: u8, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    match proto {
        TCP => tcp(sport, dport, flags),
        UDP => udp(sport, dport),
        _ => sctp(sport, dport),
    }
}

/// The one's-complement sum of the IPv6 pseudo-header.
fn pseudo6(src: &[u8], dst: &[u8], proto: u8, len: usize) -> u32 {
    sum16(dst, sum16(src, 0)) + len as u32 + u32::from(proto)
}

/// Writes the checksum of `l4` (TCP/UDP over `pseudo`, SCTP's CRC32c).
fn fill_l4_csum(l4: &mut [u8], proto: u8, pseudo: u32) {
    if proto == SCTP {
        l4[8..12].copy_from_slice(&[0; 4]);
        let c = crc32c(l4);
        l4[8..12].copy_from_slice(&c.to_le_bytes());
    } else {
        let at = csum_at(proto);
        l4[at..at + 2].copy_from_slice(&[0, 0]);
        let c = fold(sum16(l4, pseudo));
        l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }
}

/// Ethernet + IPv6 (+ an 8-byte hop-by-hop options header with `hop_by_hop`) + `l4` with
/// a correct checksum.
fn ipv6(src: [u8; 16], dst: [u8; 16], proto: u8, l4: &[u8], hop_by_hop: bool) -> Vec<u8> {
    let mut l4 = l4.to_vec();
    let pseudo = pseudo6(&src, &dst, proto, l4.len());
    fill_l4_csum(&mut l4, proto, pseudo);
    let ext: Vec<u8> = if hop_by_hop { vec![proto, 0, 1, 4, 0, 0, 0, 0] } else { Vec::new() };
    let mut p = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01, 0x86, 0xdd];
    p.extend_from_slice(&[0x60, 0, 0, 0]);
    p.extend_from_slice(&u16::try_from(ext.len() + l4.len()).unwrap().to_be_bytes());
    p.extend_from_slice(&[if hop_by_hop { 0 } else { proto }, 64]);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(&ext);
    p.extend_from_slice(&l4);
    p
}

/// A packet of either family from `src` to `dst` (same family).
fn packet(src: IpAddr, dst: IpAddr, proto: u8, l4: &[u8]) -> Vec<u8> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut l4 = l4.to_vec();
            if proto == SCTP {
                fill_l4_csum(&mut l4, proto, 0);
            }
            ipv4(s.octets(), d.octets(), proto, &l4, proto != SCTP)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => ipv6(s.octets(), d.octets(), proto, l4, false),
        _ => panic!("mixed families"),
    }
}

/// The ends of a packet of either family, after verifying every checksum it has (IPv4
/// header; TCP/UDP with the pseudo-header of its family; SCTP's CRC32c). Walks IPv6
/// hop-by-hop headers.
fn checked_any(p: &[u8]) -> (IpAddr, u16, IpAddr, u16) {
    let (src, dst, proto, l4): (IpAddr, IpAddr, u8, &[u8]) = if p[12..14] == [0x08, 0x00] {
        let ip = &p[14..34];
        assert_eq!(fold(sum16(ip, 0)), 0, "IPv4 header checksum of {p:02x?}");
        let s: [u8; 4] = ip[12..16].try_into().unwrap();
        let d: [u8; 4] = ip[16..20].try_into().unwrap();
        (s.into(), d.into(), ip[9], &p[34..])
    } else {
        let s: [u8; 16] = p[22..38].try_into().unwrap();
        let d: [u8; 16] = p[38..54].try_into().unwrap();
        let (mut next, mut off) = (p[20], 54);
        while next == 0 {
            next = p[off];
            off += (usize::from(p[off + 1]) + 1) * 8;
        }
        (s.into(), d.into(), next, &p[off..])
    };
    if proto == SCTP {
        let mut z = l4.to_vec();
        z[8..12].copy_from_slice(&[0; 4]);
        assert_eq!(crc32c(&z).to_le_bytes(), l4[8..12], "SCTP CRC32c of {p:02x?}");
    } else {
        let pseudo = match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                sum16(&d.octets(), sum16(&s.octets(), 0)) + u32::from(proto) + l4.len() as u32
            }
            _ => pseudo6(&a16(src), &a16(dst), proto, l4.len()),
        };
        let at = csum_at(proto);
        assert_ne!(l4[at..at + 2], [0, 0], "a checksum is present");
        assert_eq!(fold(sum16(l4, pseudo)), 0, "L4 checksum of {p:02x?}");
    }
    (src, u16::from_be_bytes([l4[0], l4[1]]), dst, u16::from_be_bytes([l4[2], l4[3]]))
}

fn key_any(proto: u8, src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> CtKey {
    CtKey::new(fam(src), proto, &a16(src), sport, &a16(dst), dport).0
}

/// The life of a translated flow, any family and protocol: the first packet is rewritten
/// to the backend before policy (which sees the backend) and both NAT entries recorded; a
/// later packet takes the fast path with the same rewrite; the reply is rewritten back to
/// the service at the client's to-endpoint hook. `first` builds the first packet from the
/// L4 bytes (to put extension headers in it).
fn life_of_a_flow(
    client: IpAddr,
    vip: IpAddr,
    backend: IpAddr,
    proto: u8,
    first: impl Fn(&[u8]) -> Vec<u8>,
) {
    let f = Fixture::new(&small_config());
    f.service_at(vip, proto, &[backend], 0);
    let (rc, out) = f.run(Hook::FromEndpoint, &first(&l4_for(proto, 40000, SVC_PORT, SYN)));
    assert_eq!(rc, TC_ACT_OK);
    let to_backend = (client, 40000, backend, TARGET_PORT);
    assert_eq!(checked_any(&out), to_backend);
    assert_eq!(f.policy_runs(), 1);
    let st = f.last_state();
    assert_eq!((st.family, st.protocol), (fam(client), proto));
    assert_eq!((st.dst_addr, st.dst_port), (a16(backend), TARGET_PORT), "policy sees the backend");
    assert_eq!((st.src_addr, st.src_port), (a16(client), 40000));
    let post = f.ct(&key_any(proto, client, 40000, backend, TARGET_PORT));
    assert_eq!(post.nat_flags, ct_nat::REV_NAT);
    assert_eq!((post.nat_addr, post.nat_port), (a16(vip), SVC_PORT));
    assert_eq!(post.approved, ct_approved::ORIG);
    let pre = f.ct(&key_any(proto, client, 40000, vip, SVC_PORT));
    assert_eq!(pre.nat_flags, ct_nat::DNAT);
    assert_eq!((pre.nat_addr, pre.nat_port), (a16(backend), TARGET_PORT));
    assert_eq!(pre.approved, ct_approved::ORIG);

    assert!(f.rt.clear_slot(EGRESS_SLOT).unwrap());
    let later = packet(client, vip, proto, &l4_for(proto, 40000, SVC_PORT, ACK));
    let (rc, out) = f.run(Hook::FromEndpoint, &later);
    assert_eq!(rc, TC_ACT_OK);
    assert_eq!(checked_any(&out), to_backend);
    assert_eq!(f.policy_runs(), 1, "the second packet took the fast path");

    let reply = packet(backend, client, proto, &l4_for(proto, TARGET_PORT, 40000, SYN | ACK));
    let (rc, out) = f.run(Hook::ToEndpoint, &reply);
    assert_eq!(rc, TC_ACT_OK, "the reply rides conntrack (the client has no ingress policy)");
    assert_eq!(checked_any(&out), (vip, SVC_PORT, client, 40000));
    let dropped: u64 = f.rt.drop_counts().unwrap().iter().sum();
    assert_eq!(dropped, 0);
}

fn c6() -> IpAddr {
    IpAddr::from(CLIENT6)
}

fn vip6() -> IpAddr {
    IpAddr::from(VIP6)
}

#[test]
fn ipv6_tcp_and_udp_to_a_cluster_ip_are_translated_and_replies_back() {
    require_kernel!();
    for proto in [TCP, UDP] {
        let be = IpAddr::from(backend6(2));
        life_of_a_flow(c6(), vip6(), be, proto, |l4| packet(c6(), vip6(), proto, l4));
    }
}

#[test]
fn ipv6_with_an_extension_header_is_translated_with_the_right_checksum() {
    require_kernel!();
    for proto in [TCP, UDP] {
        let be = IpAddr::from(backend6(3));
        life_of_a_flow(c6(), vip6(), be, proto, |l4| ipv6(CLIENT6, VIP6, proto, l4, true));
    }
}

#[test]
fn sctp_to_a_cluster_ip_is_translated_with_a_valid_crc32c_in_both_families() {
    require_kernel!();
    let (c4, vip4, be4) = (IpAddr::from(CLIENT), IpAddr::from(VIP), IpAddr::from(BACKENDS[0]));
    life_of_a_flow(c4, vip4, be4, SCTP, |l4| packet(c4, vip4, SCTP, l4));
    let be = IpAddr::from(backend6(4));
    life_of_a_flow(c6(), vip6(), be, SCTP, |l4| packet(c6(), vip6(), SCTP, l4));
    life_of_a_flow(c6(), vip6(), be, SCTP, |l4| ipv6(CLIENT6, VIP6, SCTP, l4, true));
}

#[test]
fn ipv6_client_ip_affinity_keeps_a_client_on_one_backend() {
    require_kernel!();
    let bes: Vec<IpAddr> = (1..=3).map(|n| IpAddr::from(backend6(n))).collect();
    let chosen = |f: &Fixture| -> Vec<IpAddr> {
        (40000..40032)
            .map(|sport| {
                let p = packet(c6(), vip6(), TCP, &tcp(sport, SVC_PORT, SYN));
                let (rc, out) = f.run(Hook::FromEndpoint, &p);
                assert_eq!(rc, TC_ACT_OK);
                checked_any(&out).2
            })
            .collect()
    };
    let f = Fixture::new(&small_config());
    f.service_at(vip6(), TCP, &bes, 0);
    let spread = chosen(&f);
    assert!(spread.iter().all(|b| bes.contains(b)));
    assert!(spread.iter().any(|b| *b != spread[0]), "hashing spreads flows: {spread:?}");

    let g = Fixture::new(&small_config());
    g.service_at(vip6(), TCP, &bes, nat_flags::AFFINITY_CLIENT_IP);
    let sticky = chosen(&g);
    assert!(sticky.iter().all(|b| *b == sticky[0]), "one backend: {sticky:?}");
    let aff = g.rt.affinity(CLIENT6, SERVICE_ID).unwrap().expect("affinity keyed by the v6 client");
    assert_eq!(bes[aff.ordinal as usize], sticky[0]);
    assert!(g.rt.affinity(v4(CLIENT), SERVICE_ID).unwrap().is_none());
}

#[test]
fn an_ipv6_frontend_without_backends_drops_and_other_ports_pass_untouched() {
    require_kernel!();
    let f = Fixture::new(&small_config());
    f.service_at(vip6(), TCP, &[], 0);
    let p = packet(c6(), vip6(), TCP, &tcp(40000, SVC_PORT, SYN));
    let (rc, _) = f.run(Hook::FromEndpoint, &p);
    assert_eq!(rc, TC_ACT_SHOT);
    assert_eq!(f.rt.drop_counts().unwrap()[drop_reason::NO_BACKEND as usize], 1);
    assert_eq!(f.policy_runs(), 0, "dropped before policy");
    // Another port or protocol of the same address is not a frontend: unchanged.
    for p in [
        packet(c6(), vip6(), TCP, &tcp(40000, 81, SYN)),
        packet(c6(), vip6(), UDP, &udp(40000, SVC_PORT)),
    ] {
        let (rc, out) = f.run(Hook::FromEndpoint, &p);
        assert_eq!(rc, TC_ACT_OK);
        assert_eq!(out, p);
    }
    // The family is part of the key: an IPv4 frontend on the same 16 key bytes (an IPv6
    // address whose last 12 bytes are zero) does not translate IPv6 packets.
    let short6 = [VIP6[0], VIP6[1], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    f.service_at(IpAddr::from([VIP6[0], VIP6[1], 0, 0]), TCP, &[IpAddr::from(BACKENDS[0])], 0);
    let p = packet(c6(), IpAddr::from(short6), TCP, &tcp(40001, SVC_PORT, SYN));
    let (rc, out) = f.run(Hook::FromEndpoint, &p);
    assert_eq!((rc, out), (TC_ACT_OK, p), "not a frontend of its family");
}
