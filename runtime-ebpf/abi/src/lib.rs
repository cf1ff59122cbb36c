//! The ABI shared by the eBPF runtime (runtime-ebpf) and userspace (compiler, loader):
//! map layouts, the per-CPU scratch state, prog-array slots and verdict codes.
//!
//! Everything here is plain data. The runtime (built for `bpfel-unknown-none`) and the
//! userspace crates compile the same definitions, so a layout change is one edit. The
//! compiler emits raw loads/stores at the `FLOW_*` offsets below; the `offsets_match_layout`
//! test keeps them equal to the struct's real layout.
#![no_std]

pub mod crc32c;

/// tc classifier return codes (`TC_ACT_*` from `linux/pkt_cls.h`).
pub mod tc_act {
    /// Use the default action configured on the qdisc.
    pub const UNSPEC: i32 = -1;
    /// Let the packet continue.
    pub const OK: i32 = 0;
    /// Restart classification from the first filter.
    pub const RECLASSIFY: i32 = 1;
    /// Drop the packet.
    pub const SHOT: i32 = 2;
    /// Continue with the next action.
    pub const PIPE: i32 = 3;
    /// Consumed by the action (no further processing, no drop accounting).
    pub const STOLEN: i32 = 4;
    /// Queued by the action.
    pub const QUEUED: i32 = 5;
    /// Repeat the action.
    pub const REPEAT: i32 = 6;
    /// Redirected (bpf_redirect).
    pub const REDIRECT: i32 = 7;
}

pub use tc_act::{OK as TC_ACT_OK, SHOT as TC_ACT_SHOT};

/// Name of the runtime's classifier for packets leaving a pod: attached at tc INGRESS of
/// the pod's host-side veth; the endpoint's EGRESS policy applies.
pub const PROG_FROM_EP: &str = "polc_from_ep";
/// Name of the runtime's classifier for packets going to a pod: attached at tc EGRESS of
/// the pod's host-side veth; the endpoint's INGRESS policy applies.
pub const PROG_TO_EP: &str = "polc_to_ep";
/// Name of the runtime's epilogue classifier, which the loader puts into
/// [`SLOT_EPILOGUE`]: conntrack create + forward on ALLOW, drop otherwise.
pub const PROG_EPILOGUE: &str = "polc_epilogue";
/// The runtime's default entry point (kept for callers that test one hook):
/// [`PROG_FROM_EP`].
pub const PROG_TC: &str = PROG_FROM_EP;

/// Name of the prog array the runtime tail-calls through (`BPF_MAP_TYPE_PROG_ARRAY`).
///
/// Map names double as pin names under bpffs, so they must not contain '.', and the kernel
/// keeps at most 15 bytes of a map name.
pub const MAP_JUMP: &str = "POLC_JUMP";
/// Name of the per-CPU scratch map (`BPF_MAP_TYPE_PERCPU_ARRAY`, one [`FlowState`] entry).
pub const MAP_STATE: &str = "POLC_STATE";

/// Name of the endpoint map (`BPF_MAP_TYPE_HASH`): key = ifindex of the pod's host-side
/// interface (u32), value = [`Endpoint`].
pub const MAP_EP: &str = "POLC_EP";
/// Name of the conntrack map (`BPF_MAP_TYPE_LRU_HASH`): key = [`CtKey`], value = [`CtEntry`].
pub const MAP_CT: &str = "POLC_CT";
/// Name of the per-CPU drop counters (`BPF_MAP_TYPE_PERCPU_ARRAY` of u64, indexed by
/// [`drop_reason`]).
pub const MAP_DROPS: &str = "POLC_DROPS";
/// Name of the runtime's read-only global holding the conntrack timeouts
/// (`[u64; CT_TIMEOUT_COUNT]`, nanoseconds, indexed by [`ct_timeout`]); set at load time.
pub const GLOBAL_CT_TIMEOUTS: &str = "POLC_CT_TIMEOUTS";
/// Name of the runtime's read-only global holding the length of one kernel tick (jiffy) in
/// nanoseconds (`u64`, 1e9 / CONFIG_HZ); set at load time. The conntrack clock is
/// `bpf_jiffies64() * ns_per_jiffy` (see [`CtEntry::last_seen_ns`]).
pub const GLOBAL_NS_PER_JIFFY: &str = "POLC_NS_PER_JIFFY";
/// The object's default for [`GLOBAL_NS_PER_JIFFY`] (CONFIG_HZ=250); the loader measures
/// the running kernel's tick and overrides it.
pub const DEFAULT_NS_PER_JIFFY: u64 = 4_000_000;
/// Name of the per-CPU flow cache in front of conntrack (`BPF_MAP_TYPE_PERCPU_ARRAY` of
/// [`FLOW_CACHE_SLOTS`] [`FlowCacheSlot`]s; see docs/runtime.md, "Flow cache"). Soft state:
/// not pinned (the pinned classifiers keep it alive); a reload starts empty.
pub const MAP_FLOW_CACHE: &str = "POLC_FLOW_CACHE";
/// Name of the runtime's read-only global holding the flow cache's refresh interval
/// (`u64`, nanoseconds; set at load time): a cached flow is re-checked against conntrack
/// at least this often. 0 disables the cache.
pub const GLOBAL_FLOW_CACHE_NS: &str = "POLC_FLOW_CACHE_NS";
/// The object's default for [`GLOBAL_FLOW_CACHE_NS`]: 1 s.
pub const FLOW_CACHE_DEFAULT_NS: u64 = 1_000_000_000;
/// Slots per CPU in [`MAP_FLOW_CACHE`] (a power of two: the index is a masked hash).
pub const FLOW_CACHE_SLOTS: u32 = 1 << FLOW_CACHE_BITS;
/// log2 of [`FLOW_CACHE_SLOTS`].
pub const FLOW_CACHE_BITS: u32 = 12;
/// Name of the service frontend map (`BPF_MAP_TYPE_HASH`): [`NatFrontendKey`] ->
/// [`NatService`].
pub const MAP_NAT_FE: &str = "POLC_NAT_FE";
/// Name of the service backend map (`BPF_MAP_TYPE_HASH`): [`NatBackendKey`] -> [`NatBackend`].
pub const MAP_NAT_BE: &str = "POLC_NAT_BE";
/// Name of the ClientIP affinity map (`BPF_MAP_TYPE_LRU_HASH`): [`NatAffinityKey`] ->
/// [`NatAffinity`].
pub const MAP_NAT_AFF: &str = "POLC_NAT_AFF";
/// Number of entries in [`MAP_NAT_FE`] (service frontends: ClusterIP x port x protocol).
pub const NAT_FE_ENTRIES: u32 = 16 * 1024;
/// Number of entries in [`MAP_NAT_BE`] (backends over all services).
pub const NAT_BE_ENTRIES: u32 = 64 * 1024;
/// Number of entries in [`MAP_NAT_AFF`] (client x service affinities; LRU).
pub const NAT_AFF_ENTRIES: u32 = 64 * 1024;

/// Number of entries in [`MAP_EP`] (endpoints per node).
pub const EP_ENTRIES: u32 = 4096;
/// Default number of entries in [`MAP_CT`]; the loader may change it at load time.
pub const CT_DEFAULT_ENTRIES: u32 = 512 * 1024;

/// Number of slots in [`MAP_JUMP`].
pub const JUMP_ENTRIES: u32 = 1024;
/// Number of entries in [`MAP_STATE`] (one scratch record per CPU).
pub const STATE_ENTRIES: u32 = 1;
/// Key of the scratch record in [`MAP_STATE`].
pub const STATE_KEY: u32 = 0;

/// The first slot of [`MAP_JUMP`] that holds a generated policy program. Policy programs
/// use slots `SLOT_FIRST_POLICY..SLOT_EPILOGUE`. Until the runtime has an endpoint map it
/// tail-calls this slot for every packet.
pub const SLOT_FIRST_POLICY: u32 = 0;
/// The slot of the runtime epilogue (conntrack create + forward, or drop) that a policy
/// program tail-calls after writing its verdict: the last slot of [`MAP_JUMP`].
pub const SLOT_EPILOGUE: u32 = JUMP_ENTRIES - 1;

/// Verdict codes a policy program writes into [`FlowState::verdict`].
pub mod verdict {
    /// No verdict written. The runtime stores this before the tail call, so a policy
    /// program that forgets to decide is treated as a deny (fail closed).
    pub const UNSET: u32 = 0;
    /// Allow the flow.
    pub const ALLOW: u32 = 1;
    /// Deny the flow.
    pub const DENY: u32 = 2;
}

/// [`FlowState::rule_id`] when no rule decided (a default such as the profile allow or
/// an end-of-tier deny applied).
pub const RULE_ID_NONE: u32 = u32::MAX;

/// Values of [`FlowState::family`].
pub mod family {
    /// IPv4: addresses use the first 4 bytes of the 16-byte fields.
    pub const IPV4: u8 = 4;
    /// IPv6.
    pub const IPV6: u8 = 6;
}

/// Values of [`FlowState::direction`], seen from the endpoint (pod).
pub mod direction {
    /// Traffic to the endpoint (ingress policy applies).
    pub const INGRESS: u8 = 0;
    /// Traffic from the endpoint (egress policy applies).
    pub const EGRESS: u8 = 1;
}

/// Values of [`FlowState::stage`]: the last stage that touched the record (debugging aid).
pub mod stage {
    /// Nothing wrote the record yet.
    pub const NONE: u32 = 0;
    /// The runtime entry filled the record and is about to tail-call the policy program.
    pub const RUNTIME: u32 = 1;
    /// A policy program ran and wrote its verdict.
    pub const POLICY: u32 = 2;
    /// The epilogue ran.
    pub const EPILOGUE: u32 = 3;
}

/// Per-CPU scratch state: the runtime fills it on a conntrack miss, the generated policy
/// program reads the flow fields and writes `verdict`, `rule_id` and `stage`.
///
/// Byte order: addresses are in network order (as on the wire; IPv4 in bytes 0..4, the
/// rest zero). Ports are in **host order** (the runtime converts), so policy programs can
/// compare port ranges directly. A 32-bit load of an IPv4 address therefore yields
/// `u32::from_ne_bytes(octets)`, which is what the compiler must compare against.
///
/// For protocols without ports both ports are 0; for ICMP/ICMPv6 `icmp_type`/`icmp_code`
/// are set, otherwise they are 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowState {
    /// [`family::IPV4`] or [`family::IPV6`].
    pub family: u8,
    /// IP protocol number (6 TCP, 17 UDP, 132 SCTP, 1 ICMP, 58 ICMPv6, ...).
    pub protocol: u8,
    /// ICMP type (0 when not ICMP).
    pub icmp_type: u8,
    /// ICMP code (0 when not ICMP).
    pub icmp_code: u8,
    /// [`direction::INGRESS`] or [`direction::EGRESS`].
    pub direction: u8,
    /// Reserved, zero.
    pub _pad0: [u8; 3],
    /// Source port, host order.
    pub src_port: u16,
    /// Destination port, host order.
    pub dst_port: u16,
    /// The endpoint (pod) this packet enters or leaves, as numbered by userspace.
    pub endpoint_id: u32,
    /// Source address, network order.
    pub src_addr: [u8; 16],
    /// Destination address, network order.
    pub dst_addr: [u8; 16],
    /// Written by the policy program: one of [`verdict`].
    pub verdict: u32,
    /// Written by the policy program: the deciding rule's id, or [`RULE_ID_NONE`].
    pub rule_id: u32,
    /// One of [`stage`]: who touched the record last.
    pub stage: u32,
    /// Where the next part of a policy program split into tail-called parts starts: 0 at
    /// the first part (the runtime zeroes it), then written by the part that tail-calls the
    /// next (see the compiler's codegen). Other programs leave it alone.
    pub resume: u32,
    /// Appended by the runtime for its epilogue: the TCP flags byte (FIN 0x01, SYN 0x02,
    /// RST 0x04, ACK 0x10), 0 for other protocols.
    pub tcp_flags: u8,
    /// Reserved, zero.
    pub _pad1: u8,
    /// The source "port" of the conntrack key (host order): the L4 source port, the ICMP
    /// echo identifier, or 0.
    pub ct_src_port: u16,
    /// The destination "port" of the conntrack key (host order), like `ct_src_port`.
    pub ct_dst_port: u16,
    /// Reserved, zero.
    pub _pad2: u16,
    /// The ifindex the packet was seen on.
    pub ifindex: u32,
    /// Reserved, zero.
    pub _pad3: u32,
}

impl FlowState {
    /// Decodes a record from its in-memory bytes (native byte order, as a map lookup from
    /// userspace returns it).
    pub fn from_bytes(b: &[u8; FLOW_STATE_SIZE]) -> FlowState {
        let u16_at = |o: usize| u16::from_ne_bytes([b[o], b[o + 1]]);
        let u32_at = |o: usize| u32::from_ne_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let addr_at = |o: usize| {
            let mut a = [0u8; 16];
            a.copy_from_slice(&b[o..o + 16]);
            a
        };
        FlowState {
            family: b[FLOW_FAMILY],
            protocol: b[FLOW_PROTOCOL],
            icmp_type: b[FLOW_ICMP_TYPE],
            icmp_code: b[FLOW_ICMP_CODE],
            direction: b[FLOW_DIRECTION],
            _pad0: [b[5], b[6], b[7]],
            src_port: u16_at(FLOW_SRC_PORT),
            dst_port: u16_at(FLOW_DST_PORT),
            endpoint_id: u32_at(FLOW_ENDPOINT_ID),
            src_addr: addr_at(FLOW_SRC_ADDR),
            dst_addr: addr_at(FLOW_DST_ADDR),
            verdict: u32_at(FLOW_VERDICT),
            rule_id: u32_at(FLOW_RULE_ID),
            stage: u32_at(FLOW_STAGE),
            resume: u32_at(FLOW_RESUME),
            tcp_flags: b[FLOW_TCP_FLAGS],
            _pad1: b[FLOW_TCP_FLAGS + 1],
            ct_src_port: u16_at(FLOW_CT_SRC_PORT),
            ct_dst_port: u16_at(FLOW_CT_DST_PORT),
            _pad2: u16_at(FLOW_CT_DST_PORT + 2),
            ifindex: u32_at(FLOW_IFINDEX),
            _pad3: u32_at(FLOW_IFINDEX + 4),
        }
    }

    /// Encodes the record into its in-memory bytes (native byte order), e.g. to seed the
    /// scratch memory of an interpreter or a map update.
    pub fn to_bytes(&self) -> [u8; FLOW_STATE_SIZE] {
        let mut b = [0u8; FLOW_STATE_SIZE];
        b[FLOW_FAMILY] = self.family;
        b[FLOW_PROTOCOL] = self.protocol;
        b[FLOW_ICMP_TYPE] = self.icmp_type;
        b[FLOW_ICMP_CODE] = self.icmp_code;
        b[FLOW_DIRECTION] = self.direction;
        b[5..8].copy_from_slice(&self._pad0);
        b[FLOW_SRC_PORT..FLOW_SRC_PORT + 2].copy_from_slice(&self.src_port.to_ne_bytes());
        b[FLOW_DST_PORT..FLOW_DST_PORT + 2].copy_from_slice(&self.dst_port.to_ne_bytes());
        b[FLOW_ENDPOINT_ID..FLOW_ENDPOINT_ID + 4].copy_from_slice(&self.endpoint_id.to_ne_bytes());
        b[FLOW_SRC_ADDR..FLOW_SRC_ADDR + 16].copy_from_slice(&self.src_addr);
        b[FLOW_DST_ADDR..FLOW_DST_ADDR + 16].copy_from_slice(&self.dst_addr);
        b[FLOW_VERDICT..FLOW_VERDICT + 4].copy_from_slice(&self.verdict.to_ne_bytes());
        b[FLOW_RULE_ID..FLOW_RULE_ID + 4].copy_from_slice(&self.rule_id.to_ne_bytes());
        b[FLOW_STAGE..FLOW_STAGE + 4].copy_from_slice(&self.stage.to_ne_bytes());
        b[FLOW_RESUME..FLOW_RESUME + 4].copy_from_slice(&self.resume.to_ne_bytes());
        b[FLOW_TCP_FLAGS] = self.tcp_flags;
        b[FLOW_TCP_FLAGS + 1] = self._pad1;
        b[FLOW_CT_SRC_PORT..FLOW_CT_SRC_PORT + 2].copy_from_slice(&self.ct_src_port.to_ne_bytes());
        b[FLOW_CT_DST_PORT..FLOW_CT_DST_PORT + 2].copy_from_slice(&self.ct_dst_port.to_ne_bytes());
        b[FLOW_CT_DST_PORT + 2..FLOW_CT_DST_PORT + 4].copy_from_slice(&self._pad2.to_ne_bytes());
        b[FLOW_IFINDEX..FLOW_IFINDEX + 4].copy_from_slice(&self.ifindex.to_ne_bytes());
        b[FLOW_IFINDEX + 4..FLOW_IFINDEX + 8].copy_from_slice(&self._pad3.to_ne_bytes());
        b
    }
}

/// Byte offsets of the [`FlowState`] fields, for raw loads and stores in generated code.
pub const FLOW_FAMILY: usize = 0;
pub const FLOW_PROTOCOL: usize = 1;
pub const FLOW_ICMP_TYPE: usize = 2;
pub const FLOW_ICMP_CODE: usize = 3;
pub const FLOW_DIRECTION: usize = 4;
pub const FLOW_SRC_PORT: usize = 8;
pub const FLOW_DST_PORT: usize = 10;
pub const FLOW_ENDPOINT_ID: usize = 12;
pub const FLOW_SRC_ADDR: usize = 16;
pub const FLOW_DST_ADDR: usize = 32;
pub const FLOW_VERDICT: usize = 48;
pub const FLOW_RULE_ID: usize = 52;
pub const FLOW_STAGE: usize = 56;
pub const FLOW_RESUME: usize = 60;
pub const FLOW_TCP_FLAGS: usize = 64;
pub const FLOW_CT_SRC_PORT: usize = 66;
pub const FLOW_CT_DST_PORT: usize = 68;
pub const FLOW_IFINDEX: usize = 72;
/// Size of [`FlowState`] in bytes (the value size of [`MAP_STATE`]).
pub const FLOW_STATE_SIZE: usize = 80;

/// TCP header flag bits, as in [`FlowState::tcp_flags`].
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

/// The value of [`MAP_EP`]: what the runtime knows about the pod behind an interface.
///
/// One policy slot per family and direction: the runtime picks by the packet's parsed
/// family. [`SLOT_NONE`] means the pod has no program for that family (no address of it):
/// such packets are dropped and counted under [`drop_reason::NO_FAMILY_POLICY`] (fail
/// closed), never run through the other family's program.
///
/// The pod's own address per family (Kubernetes `podIPs` holds at most one per family):
/// before policy runs, the endpoint's side of a new flow (the source of a packet leaving
/// the pod, the destination of one going to it) must be that address, else the packet is
/// dropped as [`drop_reason::SPOOFED`]. [`own_addr`] bits in `own_addrs` say which
/// families have one; a family without one has no own traffic.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// The endpoint's id, copied into [`FlowState::endpoint_id`].
    pub endpoint_id: u32,
    /// [`MAP_JUMP`] slot of the endpoint's IPv4 ingress policy (traffic to the pod).
    pub ingress_slot: u32,
    /// [`MAP_JUMP`] slot of the endpoint's IPv4 egress policy (traffic from the pod).
    pub egress_slot: u32,
    /// Reserved, zero.
    pub flags: u32,
    /// [`MAP_JUMP`] slot of the endpoint's IPv6 ingress policy.
    pub ingress_slot_v6: u32,
    /// [`MAP_JUMP`] slot of the endpoint's IPv6 egress policy.
    pub egress_slot_v6: u32,
    /// The pod's IPv4 address, network order (meaningful with [`own_addr::V4`]).
    pub addr_v4: [u8; 4],
    /// Which of `addr_v4` / `addr_v6` hold an address: [`own_addr`] bits.
    pub own_addrs: u32,
    /// The pod's IPv6 address, network order (meaningful with [`own_addr::V6`]).
    pub addr_v6: [u8; 16],
}

/// Bits of [`Endpoint::own_addrs`].
pub mod own_addr {
    /// [`super::Endpoint::addr_v4`] is the pod's IPv4 address.
    pub const V4: u32 = 1;
    /// [`super::Endpoint::addr_v6`] is the pod's IPv6 address.
    pub const V6: u32 = 2;
}

/// [`Endpoint`] slot value for "no program for this family".
pub const SLOT_NONE: u32 = u32::MAX;

/// An endpoint without programs and without addresses: every slot [`SLOT_NONE`].
impl Default for Endpoint {
    fn default() -> Self {
        Endpoint {
            endpoint_id: 0,
            ingress_slot: SLOT_NONE,
            egress_slot: SLOT_NONE,
            flags: 0,
            ingress_slot_v6: SLOT_NONE,
            egress_slot_v6: SLOT_NONE,
            addr_v4: [0; 4],
            own_addrs: 0,
            addr_v6: [0; 16],
        }
    }
}

/// Size of [`Endpoint`] in bytes (the value size of [`MAP_EP`]).
pub const ENDPOINT_SIZE: usize = 48;

impl Endpoint {
    /// Records `addr` as the pod's address of its family (replacing an earlier one).
    pub fn set_address(&mut self, addr: core::net::IpAddr) {
        match addr {
            core::net::IpAddr::V4(a) => {
                self.addr_v4 = a.octets();
                self.own_addrs |= own_addr::V4;
            }
            core::net::IpAddr::V6(a) => {
                self.addr_v6 = a.octets();
                self.own_addrs |= own_addr::V6;
            }
        }
    }

    /// The pod's IPv4 address, if it has one.
    pub fn address_v4(&self) -> Option<core::net::Ipv4Addr> {
        (self.own_addrs & own_addr::V4 != 0).then(|| core::net::Ipv4Addr::from(self.addr_v4))
    }

    /// The pod's IPv6 address, if it has one.
    pub fn address_v6(&self) -> Option<core::net::Ipv6Addr> {
        (self.own_addrs & own_addr::V6 != 0).then(|| core::net::Ipv6Addr::from(self.addr_v6))
    }

    /// The record's in-memory bytes (native byte order), for a map update.
    pub fn to_bytes(&self) -> [u8; ENDPOINT_SIZE] {
        let mut b = [0u8; ENDPOINT_SIZE];
        b[0..4].copy_from_slice(&self.endpoint_id.to_ne_bytes());
        b[4..8].copy_from_slice(&self.ingress_slot.to_ne_bytes());
        b[8..12].copy_from_slice(&self.egress_slot.to_ne_bytes());
        b[12..16].copy_from_slice(&self.flags.to_ne_bytes());
        b[16..20].copy_from_slice(&self.ingress_slot_v6.to_ne_bytes());
        b[20..24].copy_from_slice(&self.egress_slot_v6.to_ne_bytes());
        b[24..28].copy_from_slice(&self.addr_v4);
        b[28..32].copy_from_slice(&self.own_addrs.to_ne_bytes());
        b[32..48].copy_from_slice(&self.addr_v6);
        b
    }

    /// Decodes a record from its in-memory bytes.
    pub fn from_bytes(b: &[u8; ENDPOINT_SIZE]) -> Endpoint {
        let u = |o: usize| u32::from_ne_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let mut addr_v6 = [0u8; 16];
        addr_v6.copy_from_slice(&b[32..48]);
        Endpoint {
            endpoint_id: u(0),
            ingress_slot: u(4),
            egress_slot: u(8),
            flags: u(12),
            ingress_slot_v6: u(16),
            egress_slot_v6: u(20),
            addr_v4: [b[24], b[25], b[26], b[27]],
            own_addrs: u(28),
            addr_v6,
        }
    }
}

/// Why the runtime dropped a packet: the index into [`MAP_DROPS`].
pub mod drop_reason {
    /// The packet ends before a header it announces (Ethernet, IP, extension, L4).
    pub const TRUNCATED: u32 = 0;
    /// An IP header with a wrong version, a too-short IHL or an inconsistent length.
    pub const MALFORMED: u32 = 1;
    /// More IPv6 extension headers than the runtime walks (`IPV6_MAX_EXT_HEADERS`).
    pub const IPV6_EXT_LIMIT: u32 = 2;
    /// A non-first IP fragment: it has no L4 header to match policy or conntrack on.
    pub const FRAGMENT: u32 = 3;
    /// An Ethernet type other than IPv4, IPv6 and ARP.
    pub const ETHERTYPE: u32 = 4;
    /// The tail call to the endpoint's policy program failed (empty slot): fail closed.
    pub const NO_POLICY: u32 = 5;
    /// The policy program's verdict was DENY.
    pub const POLICY_DENY: u32 = 6;
    /// The policy program wrote no verdict (or an unknown one).
    pub const NO_VERDICT: u32 = 7;
    /// The per-CPU scratch record could not be looked up (cannot happen with a loaded map).
    pub const NO_STATE: u32 = 8;
    /// The tail call to the epilogue failed; counted by nobody in the runtime (the policy
    /// program drops), reserved for generated code.
    pub const NO_EPILOGUE: u32 = 9;
    /// The endpoint has no policy program for the packet's family (e.g. IPv6 to an
    /// IPv4-only pod): fail closed.
    pub const NO_FAMILY_POLICY: u32 = 10;
    /// A packet to a service frontend ([`super::MAP_NAT_FE`]) that has no backends (or
    /// whose backend entry is missing): dropped, as kube-proxy rejects it.
    pub const NO_BACKEND: u32 = 11;
    /// A new flow whose endpoint-side address (the source leaving the pod, the destination
    /// going to it) is not the pod's own address of the packet's family
    /// ([`super::Endpoint::addr_v4`] / [`super::Endpoint::addr_v6`]): anti-spoofing.
    pub const SPOOFED: u32 = 12;
    /// Number of counters in [`super::MAP_DROPS`] (room for more reasons).
    pub const COUNT: u32 = 16;
    /// Short names, by reason, for status output.
    pub const NAMES: [&str; 13] = [
        "truncated",
        "malformed",
        "ipv6_ext_limit",
        "fragment",
        "ethertype",
        "no_policy",
        "policy_deny",
        "no_verdict",
        "no_state",
        "no_epilogue",
        "no_family_policy",
        "no_backend",
        "spoofed",
    ];
}

/// Maximum number of IPv6 extension headers the parser walks before giving up (drop).
pub const IPV6_MAX_EXT_HEADERS: u32 = 8;

/// [`CtEntry::state`] values. TCP uses SYN_SENT..CLOSED; other protocols use OPEN.
pub mod ct_state {
    /// A pseudo-flow of a protocol without connection state (UDP, ICMP, SCTP, other).
    pub const OPEN: u8 = 0;
    /// The originator sent a SYN.
    pub const SYN_SENT: u8 = 1;
    /// The responder answered with SYN+ACK.
    pub const SYN_RECV: u8 = 2;
    /// The originator acknowledged the SYN+ACK (or the flow was picked up mid-stream).
    pub const ESTABLISHED: u8 = 3;
    /// A FIN was seen (either side).
    pub const FIN_WAIT: u8 = 4;
    /// A RST was seen.
    pub const CLOSED: u8 = 5;
}

/// [`CtEntry::approved`] bits: whose policy allowed the connection. A packet is forwarded
/// on the fast path only if the bit of the local endpoint's role is set (see docs/runtime.md).
pub mod ct_approved {
    /// The originator's egress policy allowed it (set at the originator's from-endpoint hook).
    pub const ORIG: u8 = 1;
    /// The responder's ingress policy allowed it (set at the responder's to-endpoint hook).
    pub const RESP: u8 = 2;
}

/// Indexes of the conntrack timeouts in [`GLOBAL_CT_TIMEOUTS`].
pub mod ct_timeout {
    /// TCP before the handshake completes (SYN_SENT, SYN_RECV).
    pub const TCP_SYN: usize = 0;
    /// TCP established.
    pub const TCP_ESTABLISHED: usize = 1;
    /// TCP after a FIN.
    pub const TCP_FIN: usize = 2;
    /// TCP after a RST.
    pub const TCP_RST: usize = 3;
    /// UDP.
    pub const UDP: usize = 4;
    /// ICMP and ICMPv6.
    pub const ICMP: usize = 5;
    /// Any other protocol (SCTP included).
    pub const OTHER: usize = 6;
    /// Number of slots (one spare).
    pub const COUNT: usize = 8;
}

const SEC: u64 = 1_000_000_000;

/// Default conntrack timeouts in nanoseconds, indexed by [`ct_timeout`]: Calico's eBPF
/// dataplane defaults (FelixConfiguration `bpfConntrackTimeouts`): TCP pre-established
/// 20 s, established 1 h, FINs seen 30 s, RST seen 40 s, UDP 60 s, ICMP 5 s, other 10 min.
pub const CT_DEFAULT_TIMEOUTS_NS: [u64; ct_timeout::COUNT] =
    [20 * SEC, 3600 * SEC, 30 * SEC, 40 * SEC, 60 * SEC, 5 * SEC, 600 * SEC, 600 * SEC];

/// The key of [`MAP_CT`]: a flow normalised so both directions give the same key. The
/// (address, port) pair that compares lower (addresses as two native-endian u64 words,
/// then ports) is `lo`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    /// The lower side's address, network order (IPv4 in bytes 0..4).
    pub addr_lo: [u8; 16],
    /// The higher side's address.
    pub addr_hi: [u8; 16],
    /// The lower side's port (host order; ICMP echo id or 0 without ports).
    pub port_lo: u16,
    /// The higher side's port.
    pub port_hi: u16,
    /// IP protocol number.
    pub protocol: u8,
    /// [`family`] value.
    pub family: u8,
    /// Reserved, zero.
    pub _pad: [u8; 2],
}

/// Size of [`CtKey`] in bytes.
pub const CT_KEY_SIZE: usize = 40;

impl CtKey {
    /// Builds the normalised key of a packet; the bool is true if the packet's source is
    /// the `lo` side. Always inlined: six arguments exceed eBPF's five-register calls.
    #[inline(always)]
    pub fn new(
        family: u8,
        protocol: u8,
        src: &[u8; 16],
        src_port: u16,
        dst: &[u8; 16],
        dst_port: u16,
    ) -> (CtKey, bool) {
        let src_is_lo = side_lt_eq(src, src_port, dst, dst_port);
        let (addr_lo, port_lo, addr_hi, port_hi) = if src_is_lo {
            (*src, src_port, *dst, dst_port)
        } else {
            (*dst, dst_port, *src, src_port)
        };
        let key = CtKey { addr_lo, addr_hi, port_lo, port_hi, protocol, family, _pad: [0; 2] };
        (key, src_is_lo)
    }

    /// The record's in-memory bytes (native byte order), for a map lookup.
    pub fn to_bytes(&self) -> [u8; CT_KEY_SIZE] {
        let mut b = [0u8; CT_KEY_SIZE];
        b[0..16].copy_from_slice(&self.addr_lo);
        b[16..32].copy_from_slice(&self.addr_hi);
        b[32..34].copy_from_slice(&self.port_lo.to_ne_bytes());
        b[34..36].copy_from_slice(&self.port_hi.to_ne_bytes());
        b[36] = self.protocol;
        b[37] = self.family;
        b[38..40].copy_from_slice(&self._pad);
        b
    }

    /// Decodes a key from its in-memory bytes.
    pub fn from_bytes(b: &[u8; CT_KEY_SIZE]) -> CtKey {
        let mut addr_lo = [0u8; 16];
        let mut addr_hi = [0u8; 16];
        addr_lo.copy_from_slice(&b[0..16]);
        addr_hi.copy_from_slice(&b[16..32]);
        CtKey {
            addr_lo,
            addr_hi,
            port_lo: u16::from_ne_bytes([b[32], b[33]]),
            port_hi: u16::from_ne_bytes([b[34], b[35]]),
            protocol: b[36],
            family: b[37],
            _pad: [b[38], b[39]],
        }
    }
}

/// Whether (a, a_port) <= (b, b_port) in the key order: addresses as two native-endian u64
/// words (cheap in eBPF; any total order works), then ports.
#[inline(always)]
fn side_lt_eq(a: &[u8; 16], a_port: u16, b: &[u8; 16], b_port: u16) -> bool {
    let w = |x: &[u8; 16], i: usize| {
        u64::from_ne_bytes([
            x[i],
            x[i + 1],
            x[i + 2],
            x[i + 3],
            x[i + 4],
            x[i + 5],
            x[i + 6],
            x[i + 7],
        ])
    };
    let (a0, a1, b0, b1) = (w(a, 0), w(a, 8), w(b, 0), w(b, 8));
    if a0 != b0 {
        return a0 < b0;
    }
    if a1 != b1 {
        return a1 < b1;
    }
    a_port <= b_port
}

/// The value of [`MAP_CT`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntry {
    /// The conntrack clock at the last packet: `bpf_jiffies64() * ns_per_jiffy`
    /// ([`GLOBAL_NS_PER_JIFFY`]), nanoseconds with one tick (1-10 ms) of resolution, not
    /// comparable to CLOCK_MONOTONIC (jiffies start near 2^32); only differences matter.
    /// Older than the state's timeout = expired (treated as a miss).
    pub last_seen_ns: u64,
    /// One of [`ct_state`].
    pub state: u8,
    /// 1 if the originator (the first packet's source) is the key's `lo` side.
    pub orig_is_lo: u8,
    /// [`ct_approved`] bits.
    pub approved: u8,
    /// Reserved, zero.
    pub _pad: u8,
    /// The rule that allowed it on the originator's side ([`RULE_ID_NONE`] if none/default).
    pub orig_rule: u32,
    /// The rule that allowed it on the responder's side.
    pub resp_rule: u32,
    /// The interface (ifindex) whose hook set [`ct_approved::ORIG`]: the originator's
    /// host-side veth. A packet needing the ORIG approval hits only there, so another
    /// interface sending the same 5-tuple (a spoofing pod) misses and goes through the
    /// anti-spoofing check. 0 while ORIG is not set.
    pub orig_ifindex: u32,
    /// Service NAT (appended): for a [`ct_nat::DNAT`] entry the backend the packets of
    /// the flow are rewritten to; for a [`ct_nat::REV_NAT`] entry the service address
    /// replies are rewritten back to. Network order; zero without NAT.
    pub nat_addr: [u8; 16],
    /// The port that goes with `nat_addr`, host order.
    pub nat_port: u16,
    /// [`ct_nat`] bits; 0 = no NAT.
    pub nat_flags: u8,
    /// Reserved, zero.
    pub _pad3: u8,
    /// The interface whose hook set [`ct_approved::RESP`] (the responder's), like
    /// `orig_ifindex`. Both replaced reserved fields; the size did not change.
    pub resp_ifindex: u32,
}

/// Size of [`CtEntry`] in bytes.
pub const CT_ENTRY_SIZE: usize = 48;

/// [`CtEntry::nat_flags`] bits (see docs/runtime.md, "Service NAT").
pub mod ct_nat {
    /// The entry is keyed by the client's pre-NAT tuple (client, service): forward packets
    /// at the client's from-endpoint hook get their destination rewritten to `nat_addr`.
    pub const DNAT: u8 = 1;
    /// The entry is keyed by the post-NAT tuple (client, backend) and `nat_addr` is the
    /// service: replies at the client's to-endpoint hook get their source rewritten back.
    pub const REV_NAT: u8 = 2;
}

impl CtEntry {
    /// The record's in-memory bytes (native byte order), for a map update.
    pub fn to_bytes(&self) -> [u8; CT_ENTRY_SIZE] {
        let mut b = [0u8; CT_ENTRY_SIZE];
        b[0..8].copy_from_slice(&self.last_seen_ns.to_ne_bytes());
        b[8] = self.state;
        b[9] = self.orig_is_lo;
        b[10] = self.approved;
        b[11] = self._pad;
        b[12..16].copy_from_slice(&self.orig_rule.to_ne_bytes());
        b[16..20].copy_from_slice(&self.resp_rule.to_ne_bytes());
        b[20..24].copy_from_slice(&self.orig_ifindex.to_ne_bytes());
        b[24..40].copy_from_slice(&self.nat_addr);
        b[40..42].copy_from_slice(&self.nat_port.to_ne_bytes());
        b[42] = self.nat_flags;
        b[43] = self._pad3;
        b[44..48].copy_from_slice(&self.resp_ifindex.to_ne_bytes());
        b
    }

    /// Decodes an entry from its in-memory bytes.
    pub fn from_bytes(b: &[u8; CT_ENTRY_SIZE]) -> CtEntry {
        let u32_at = |o: usize| u32::from_ne_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        CtEntry {
            last_seen_ns: u64::from_ne_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
            state: b[8],
            orig_is_lo: b[9],
            approved: b[10],
            _pad: b[11],
            orig_rule: u32_at(12),
            resp_rule: u32_at(16),
            orig_ifindex: u32_at(20),
            nat_addr: addr_at(b, 24),
            nat_port: u16::from_ne_bytes([b[40], b[41]]),
            nat_flags: b[42],
            _pad3: b[43],
            resp_ifindex: u32_at(44),
        }
    }
}

impl CtKey {
    /// The key as the five native-endian u64 words the runtime builds it from (addresses,
    /// then ports, protocol and family): the input of [`flow_cache_index`].
    pub fn words(&self) -> [u64; 5] {
        let b = self.to_bytes();
        let w = |o: usize| {
            u64::from_ne_bytes([
                b[o],
                b[o + 1],
                b[o + 2],
                b[o + 3],
                b[o + 4],
                b[o + 5],
                b[o + 6],
                b[o + 7],
            ])
        };
        [w(0), w(8), w(16), w(24), w(32)]
    }
}

/// A slot of [`MAP_FLOW_CACHE`]: "this CPU saw packets of `key` at this hook, in this
/// direction, on interface `ifindex`, pass conntrack's fast path, so until `expires_ns`
/// such packets may pass without the conntrack lookup".
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCacheSlot {
    /// The conntrack key, a full copy (a hit compares all of it).
    pub key: CtKey,
    /// The interface the packets were seen on (the approval's interface).
    pub ifindex: u32,
    /// [`flow_cache_tag`] bits; 0 = empty.
    pub tag: u32,
    /// The conntrack clock ([`CtEntry::last_seen_ns`]) until which the slot may be used;
    /// 0 = empty. Written 0 first and last with its real value.
    pub expires_ns: u64,
}

/// Size of [`FlowCacheSlot`] in bytes.
pub const FLOW_CACHE_SLOT_SIZE: usize = 56;

/// [`FlowCacheSlot::tag`] bits: which packets of the key the slot speaks for.
pub mod flow_cache_tag {
    /// The slot holds a flow (never 0 in a filled slot).
    pub const VALID: u32 = 1;
    /// Seen at the to-endpoint hook (else the from-endpoint hook).
    pub const TO_EP: u32 = 2;
    /// The packets' source is the key's `lo` side (the packet direction).
    pub const SRC_IS_LO: u32 = 4;

    /// The tag of a packet at a hook (`to_ep`) whose source is the key's lo side
    /// (`src_is_lo`).
    #[inline(always)]
    pub fn of(to_ep: bool, src_is_lo: bool) -> u32 {
        VALID | if to_ep { TO_EP } else { 0 } | if src_is_lo { SRC_IS_LO } else { 0 }
    }
}

/// The slot of [`MAP_FLOW_CACHE`] for a key (its [`CtKey::words`]) and a packet's tag: a
/// multiplicative (Fibonacci) hash of the words folded into one, its top
/// [`FLOW_CACHE_BITS`] bits. The tag is part of the hash, so the up to four (hook,
/// direction) views of one local pod-to-pod flow use different slots instead of evicting
/// each other on every packet.
#[inline(always)]
pub fn flow_cache_index(w: &[u64; 5], tag: u32) -> u32 {
    // The high address words and the tag land in bits the others leave mostly empty (IPv4
    // addresses use bits 0..32 of their first word; ports, protocol and family bits 0..48).
    let folded = w[0] ^ w[1] ^ (w[2] ^ w[3]).rotate_left(32) ^ w[4] ^ (u64::from(tag) << 56);
    (folded.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - FLOW_CACHE_BITS)) as u32
}

impl FlowCacheSlot {
    /// Decodes a slot from its in-memory bytes.
    pub fn from_bytes(b: &[u8; FLOW_CACHE_SLOT_SIZE]) -> FlowCacheSlot {
        let mut key = [0u8; CT_KEY_SIZE];
        key.copy_from_slice(&b[0..CT_KEY_SIZE]);
        FlowCacheSlot {
            key: CtKey::from_bytes(&key),
            ifindex: u32::from_ne_bytes([b[40], b[41], b[42], b[43]]),
            tag: u32::from_ne_bytes([b[44], b[45], b[46], b[47]]),
            expires_ns: u64::from_ne_bytes([
                b[48], b[49], b[50], b[51], b[52], b[53], b[54], b[55],
            ]),
        }
    }

    /// The slot's in-memory bytes (native byte order).
    pub fn to_bytes(&self) -> [u8; FLOW_CACHE_SLOT_SIZE] {
        let mut b = [0u8; FLOW_CACHE_SLOT_SIZE];
        b[0..CT_KEY_SIZE].copy_from_slice(&self.key.to_bytes());
        b[40..44].copy_from_slice(&self.ifindex.to_ne_bytes());
        b[44..48].copy_from_slice(&self.tag.to_ne_bytes());
        b[48..56].copy_from_slice(&self.expires_ns.to_ne_bytes());
        b
    }
}

/// Decodes a 16-byte address at `o` of `b` (the caller's slice is long enough).
fn addr_at(b: &[u8], o: usize) -> [u8; 16] {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[o..o + 16]);
    a
}

/// The key of [`MAP_NAT_FE`]: a service frontend (ClusterIP, port, protocol).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NatFrontendKey {
    /// The service address, network order (IPv4 in bytes 0..4, the rest zero).
    pub addr: [u8; 16],
    /// The service port, host order.
    pub port: u16,
    /// IP protocol number (the runtime translates 6 TCP, 17 UDP and 132 SCTP).
    pub protocol: u8,
    /// [`family`] value.
    pub family: u8,
}

/// Size of [`NatFrontendKey`] in bytes.
pub const NAT_FE_KEY_SIZE: usize = 20;

/// [`NatService::flags`] bits.
pub mod nat_flags {
    /// `sessionAffinity: ClientIP`: a client keeps its backend while it keeps talking
    /// (within [`super::NatService::affinity_timeout_s`]).
    pub const AFFINITY_CLIENT_IP: u32 = 1;
}

/// The value of [`MAP_NAT_FE`]: which service, how many backends, how to pick one.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatService {
    /// The service's id (chosen by userspace), the first half of [`NatBackendKey`].
    pub service_id: u32,
    /// Number of backends: ordinals `0..backend_count` in [`MAP_NAT_BE`]. 0 = drop.
    pub backend_count: u32,
    /// [`nat_flags`] bits.
    pub flags: u32,
    /// ClientIP affinity timeout in seconds (Kubernetes' default is 10800).
    pub affinity_timeout_s: u32,
}

/// Size of [`NatService`] in bytes.
pub const NAT_SERVICE_SIZE: usize = 16;

/// The key of [`MAP_NAT_BE`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NatBackendKey {
    /// [`NatService::service_id`].
    pub service_id: u32,
    /// 0..backend_count.
    pub ordinal: u32,
}

/// Size of [`NatBackendKey`] in bytes.
pub const NAT_BE_KEY_SIZE: usize = 8;

/// The value of [`MAP_NAT_BE`]: one backend (pod address and target port).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatBackend {
    /// The backend address, network order (IPv4 in bytes 0..4).
    pub addr: [u8; 16],
    /// The backend (target) port, host order.
    pub port: u16,
    /// Reserved, zero.
    pub _pad: u16,
}

/// Size of [`NatBackend`] in bytes.
pub const NAT_BACKEND_SIZE: usize = 20;

/// The key of [`MAP_NAT_AFF`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NatAffinityKey {
    /// The client address, network order.
    pub client: [u8; 16],
    /// [`NatService::service_id`].
    pub service_id: u32,
}

/// Size of [`NatAffinityKey`] in bytes.
pub const NAT_AFF_KEY_SIZE: usize = 20;

/// The value of [`MAP_NAT_AFF`]: the backend a client was last sent to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatAffinity {
    /// The backend ordinal.
    pub ordinal: u32,
    /// Reserved, zero.
    pub _pad: u32,
    /// The conntrack clock (see [`CtEntry::last_seen_ns`]) when it was last used.
    pub last_seen_ns: u64,
}

/// Size of [`NatAffinity`] in bytes.
pub const NAT_AFFINITY_SIZE: usize = 16;

impl NatFrontendKey {
    /// The key's in-memory bytes, for a map update.
    pub fn to_bytes(&self) -> [u8; NAT_FE_KEY_SIZE] {
        let mut b = [0u8; NAT_FE_KEY_SIZE];
        b[0..16].copy_from_slice(&self.addr);
        b[16..18].copy_from_slice(&self.port.to_ne_bytes());
        b[18] = self.protocol;
        b[19] = self.family;
        b
    }
}

impl NatService {
    /// The value's in-memory bytes, for a map update.
    pub fn to_bytes(&self) -> [u8; NAT_SERVICE_SIZE] {
        let mut b = [0u8; NAT_SERVICE_SIZE];
        b[0..4].copy_from_slice(&self.service_id.to_ne_bytes());
        b[4..8].copy_from_slice(&self.backend_count.to_ne_bytes());
        b[8..12].copy_from_slice(&self.flags.to_ne_bytes());
        b[12..16].copy_from_slice(&self.affinity_timeout_s.to_ne_bytes());
        b
    }
}

impl NatBackendKey {
    /// The key's in-memory bytes, for a map update.
    pub fn to_bytes(&self) -> [u8; NAT_BE_KEY_SIZE] {
        let mut b = [0u8; NAT_BE_KEY_SIZE];
        b[0..4].copy_from_slice(&self.service_id.to_ne_bytes());
        b[4..8].copy_from_slice(&self.ordinal.to_ne_bytes());
        b
    }
}

impl NatBackend {
    /// The value's in-memory bytes, for a map update.
    pub fn to_bytes(&self) -> [u8; NAT_BACKEND_SIZE] {
        let mut b = [0u8; NAT_BACKEND_SIZE];
        b[0..16].copy_from_slice(&self.addr);
        b[16..18].copy_from_slice(&self.port.to_ne_bytes());
        b[18..20].copy_from_slice(&self._pad.to_ne_bytes());
        b
    }
}

impl NatAffinityKey {
    /// The key's in-memory bytes, for a map lookup.
    pub fn to_bytes(&self) -> [u8; NAT_AFF_KEY_SIZE] {
        let mut b = [0u8; NAT_AFF_KEY_SIZE];
        b[0..16].copy_from_slice(&self.client);
        b[16..20].copy_from_slice(&self.service_id.to_ne_bytes());
        b
    }
}

impl NatAffinity {
    /// Decodes a value from its in-memory bytes.
    pub fn from_bytes(b: &[u8; NAT_AFFINITY_SIZE]) -> NatAffinity {
        NatAffinity {
            ordinal: u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
            _pad: u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
            last_seen_ns: u64::from_ne_bytes([
                b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15],
            ]),
        }
    }
}

// Checked at compile time, for the runtime build too.
const _: () = assert!(core::mem::size_of::<NatFrontendKey>() == NAT_FE_KEY_SIZE);
const _: () = assert!(core::mem::size_of::<NatService>() == NAT_SERVICE_SIZE);
const _: () = assert!(core::mem::size_of::<NatBackendKey>() == NAT_BE_KEY_SIZE);
const _: () = assert!(core::mem::size_of::<NatBackend>() == NAT_BACKEND_SIZE);
const _: () = assert!(core::mem::size_of::<NatAffinityKey>() == NAT_AFF_KEY_SIZE);
const _: () = assert!(core::mem::size_of::<NatAffinity>() == NAT_AFFINITY_SIZE);
const _: () = assert!(core::mem::size_of::<Endpoint>() == ENDPOINT_SIZE);
// The runtime compares addr_v6 as two u64 words.
const _: () = assert!(core::mem::offset_of!(Endpoint, addr_v6) == 32);
const _: () = assert!(core::mem::align_of::<Endpoint>() == 8);
const _: () = assert!(core::mem::size_of::<CtKey>() == CT_KEY_SIZE);
const _: () = assert!(core::mem::size_of::<CtEntry>() == CT_ENTRY_SIZE);
const _: () = assert!(core::mem::size_of::<FlowCacheSlot>() == FLOW_CACHE_SLOT_SIZE);
const _: () = assert!(FLOW_CACHE_SLOTS.is_power_of_two() && FLOW_CACHE_BITS < 32);
const _: () = assert!(drop_reason::NAMES.len() <= drop_reason::COUNT as usize);
const _: () = assert!(SLOT_FIRST_POLICY < SLOT_EPILOGUE && SLOT_EPILOGUE < JUMP_ENTRIES);
const _: () = assert!(core::mem::size_of::<FlowState>() == FLOW_STATE_SIZE);
const _: () = assert!(core::mem::offset_of!(FlowState, stage) == FLOW_STAGE);

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, offset_of, size_of};

    #[test]
    fn offsets_match_layout() {
        assert_eq!(FLOW_FAMILY, offset_of!(FlowState, family));
        assert_eq!(FLOW_PROTOCOL, offset_of!(FlowState, protocol));
        assert_eq!(FLOW_ICMP_TYPE, offset_of!(FlowState, icmp_type));
        assert_eq!(FLOW_ICMP_CODE, offset_of!(FlowState, icmp_code));
        assert_eq!(FLOW_DIRECTION, offset_of!(FlowState, direction));
        assert_eq!(FLOW_SRC_PORT, offset_of!(FlowState, src_port));
        assert_eq!(FLOW_DST_PORT, offset_of!(FlowState, dst_port));
        assert_eq!(FLOW_ENDPOINT_ID, offset_of!(FlowState, endpoint_id));
        assert_eq!(FLOW_SRC_ADDR, offset_of!(FlowState, src_addr));
        assert_eq!(FLOW_DST_ADDR, offset_of!(FlowState, dst_addr));
        assert_eq!(FLOW_VERDICT, offset_of!(FlowState, verdict));
        assert_eq!(FLOW_RULE_ID, offset_of!(FlowState, rule_id));
        assert_eq!(FLOW_STAGE, offset_of!(FlowState, stage));
        assert_eq!(FLOW_RESUME, offset_of!(FlowState, resume));
        assert_eq!(FLOW_TCP_FLAGS, offset_of!(FlowState, tcp_flags));
        assert_eq!(FLOW_CT_SRC_PORT, offset_of!(FlowState, ct_src_port));
        assert_eq!(FLOW_CT_DST_PORT, offset_of!(FlowState, ct_dst_port));
        assert_eq!(FLOW_IFINDEX, offset_of!(FlowState, ifindex));
        assert_eq!(FLOW_STATE_SIZE, size_of::<FlowState>());
    }

    #[test]
    fn fields_are_naturally_aligned() {
        // Generated code uses LDX/STX of the field's width; the verifier and the JIT want
        // them aligned.
        assert_eq!(align_of::<FlowState>(), 4);
        assert_eq!(FLOW_SRC_PORT % 2, 0);
        assert_eq!(FLOW_DST_PORT % 2, 0);
        for off in [FLOW_ENDPOINT_ID, FLOW_SRC_ADDR, FLOW_DST_ADDR, FLOW_VERDICT, FLOW_RULE_ID] {
            assert_eq!(off % 4, 0, "offset {off}");
        }
        assert_eq!(FLOW_STATE_SIZE % 8, 0);
    }

    #[test]
    fn bytes_round_trip_and_match_memory_layout() {
        let st = FlowState {
            family: family::IPV4,
            protocol: 6,
            icmp_type: 3,
            icmp_code: 4,
            direction: direction::EGRESS,
            _pad0: [0; 3],
            src_port: 0x1234,
            dst_port: 443,
            endpoint_id: 0xdead_beef,
            src_addr: [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            dst_addr: [0xfe, 0x80, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14],
            verdict: verdict::DENY,
            rule_id: 7,
            stage: stage::POLICY,
            resume: 3,
            tcp_flags: tcp_flags::SYN,
            _pad1: 0,
            ct_src_port: 0x1234,
            ct_dst_port: 443,
            _pad2: 0,
            ifindex: 9,
            _pad3: 0,
        };
        let bytes = st.to_bytes();
        assert_eq!(FlowState::from_bytes(&bytes), st);
        // The encoding is the struct's own memory image.
        // SAFETY: FlowState is repr(C), Copy, and FLOW_STATE_SIZE bytes with no padding
        // holes (all padding is explicit fields).
        let image: [u8; FLOW_STATE_SIZE] = unsafe { core::mem::transmute(st) };
        assert_eq!(bytes, image);
        assert_eq!(bytes[FLOW_DST_PORT..FLOW_DST_PORT + 2], 443u16.to_ne_bytes());
    }

    #[test]
    fn ct_key_is_the_same_both_ways_and_round_trips() {
        let a = [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let b = [10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let (k1, a_lo) = CtKey::new(family::IPV4, 6, &a, 40000, &b, 443);
        let (k2, b_lo) = CtKey::new(family::IPV4, 6, &b, 443, &a, 40000);
        assert_eq!(k1, k2);
        assert_ne!(a_lo, b_lo);
        // Same address: the port decides.
        let (k3, lo) = CtKey::new(family::IPV4, 17, &a, 53, &a, 5353);
        assert!(lo);
        assert_eq!((k3.port_lo, k3.port_hi), (53, 5353));
        let (k4, lo) = CtKey::new(family::IPV4, 17, &a, 5353, &a, 53);
        assert!(!lo);
        assert_eq!(k3, k4);
        assert_eq!(CtKey::from_bytes(&k1.to_bytes()), k1);
        // SAFETY: repr(C) with explicit padding, CT_KEY_SIZE bytes.
        let image: [u8; CT_KEY_SIZE] = unsafe { core::mem::transmute(k1) };
        assert_eq!(image, k1.to_bytes());
    }

    #[test]
    fn ct_entry_and_endpoint_encode_as_their_memory_image() {
        let e = CtEntry {
            last_seen_ns: 0x0102_0304_0506_0708,
            state: ct_state::ESTABLISHED,
            orig_is_lo: 1,
            approved: ct_approved::ORIG | ct_approved::RESP,
            _pad: 0,
            orig_rule: 7,
            resp_rule: RULE_ID_NONE,
            orig_ifindex: 0x0a0b_0c0d,
            nat_addr: [10, 96, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9],
            nat_port: 8080,
            nat_flags: ct_nat::REV_NAT,
            _pad3: 0,
            resp_ifindex: 0x0e0f_1011,
        };
        assert_eq!(CtEntry::from_bytes(&e.to_bytes()), e);
        assert_eq!(e.to_bytes()[20..24], 0x0a0b_0c0du32.to_ne_bytes());
        assert_eq!(e.to_bytes()[44..48], 0x0e0f_1011u32.to_ne_bytes());
        // SAFETY: repr(C) with explicit padding, CT_ENTRY_SIZE bytes.
        let image: [u8; CT_ENTRY_SIZE] = unsafe { core::mem::transmute(e) };
        assert_eq!(image, e.to_bytes());
        let mut ep = Endpoint {
            endpoint_id: 1,
            ingress_slot: 2,
            egress_slot: 3,
            flags: 0,
            ingress_slot_v6: 4,
            egress_slot_v6: SLOT_NONE,
            ..Endpoint::default()
        };
        ep.set_address(core::net::IpAddr::from([10, 0, 0, 7]));
        ep.set_address(core::net::IpAddr::from([0xfd77, 0, 0, 0, 0, 0, 0, 0x0102]));
        // SAFETY: repr(C) with no padding holes: six u32, 4 bytes, a u32, 16 bytes.
        let image: [u8; ENDPOINT_SIZE] = unsafe { core::mem::transmute(ep) };
        assert_eq!(image, ep.to_bytes());
        assert_eq!(Endpoint::from_bytes(&image), ep);
        assert_eq!(&image[24..28], &[10, 0, 0, 7]);
        assert_eq!(image[47], 2);
        assert_eq!(ep.address_v4(), Some(core::net::Ipv4Addr::new(10, 0, 0, 7)));
        assert_eq!(ep.address_v6().map(|a| a.segments()[7]), Some(0x0102));
        assert_eq!(Endpoint::default().egress_slot_v6, SLOT_NONE);
        assert_eq!(
            (Endpoint::default().address_v4(), Endpoint::default().address_v6()),
            (None, None)
        );
    }

    #[test]
    fn flow_cache_slot_encodes_as_its_memory_image() {
        let a = [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let b = [10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let slot = FlowCacheSlot {
            key: CtKey::new(family::IPV4, 6, &a, 40000, &b, 443).0,
            ifindex: 0x0a0b_0c0d,
            tag: flow_cache_tag::of(true, false),
            expires_ns: 0x0102_0304_0506_0708,
        };
        assert_eq!(FlowCacheSlot::from_bytes(&slot.to_bytes()), slot);
        // SAFETY: repr(C) with no padding holes: a 40-byte key, two u32, a u64.
        let image: [u8; FLOW_CACHE_SLOT_SIZE] = unsafe { core::mem::transmute(slot) };
        assert_eq!(image, slot.to_bytes());
        assert_eq!(offset_of!(FlowCacheSlot, ifindex), 40);
        assert_eq!(offset_of!(FlowCacheSlot, expires_ns), 48);
        assert_eq!(slot.tag, flow_cache_tag::VALID | flow_cache_tag::TO_EP);
        // The words are the key's memory image, word by word.
        let w = slot.key.words();
        assert_eq!(w[0], u64::from(u32::from_ne_bytes([10, 0, 0, 1])));
        assert_eq!(w[4], 40000 | 443 << 16 | 6 << 32 | u64::from(family::IPV4) << 40);
    }

    /// The four (hook, direction) views of a flow never share a slot, and flows spread
    /// over the slots about as well as random picks would.
    #[test]
    fn flow_cache_index_separates_views_and_spreads_flows() {
        let tags = [(false, false), (false, true), (true, false), (true, true)]
            .map(|(to_ep, lo)| flow_cache_tag::of(to_ep, lo));
        let mut used = [false; FLOW_CACHE_SLOTS as usize];
        let mut distinct = 0;
        let (mut v4_flows, mut v6_flows) = (0, 0);
        for n in 0u16..2000 {
            // One client talking to one server from many source ports (the worst case for
            // address-only hashes), then IPv6 clients of one /64 to one server.
            let (key, v6) = if n < 1000 {
                let a = [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
                let b = [10, 0, 1, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
                (CtKey::new(family::IPV4, 6, &a, 30000 + n, &b, 443).0, false)
            } else {
                let mut a = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
                a[14..16].copy_from_slice(&n.to_be_bytes());
                let b = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff];
                (CtKey::new(family::IPV6, 17, &a, 5353, &b, 53).0, true)
            };
            let idx = tags.map(|t| flow_cache_index(&key.words(), t));
            assert!(idx.iter().all(|&i| i < FLOW_CACHE_SLOTS));
            for (i, x) in idx.iter().enumerate() {
                assert!(idx[i + 1..].iter().all(|y| y != x), "views share a slot: {idx:?}");
            }
            let i = idx[0] as usize;
            if !used[i] {
                used[i] = true;
                distinct += 1;
                if v6 {
                    v6_flows += 1;
                } else {
                    v4_flows += 1;
                }
            }
        }
        // 2000 random picks of 4096 slots hit about 1577 distinct ones.
        assert!(distinct > 1450, "2000 flows use {distinct} slots");
        assert!(v4_flows > 700 && v6_flows > 600, "{v4_flows} IPv4, {v6_flows} IPv6");
    }

    #[test]
    fn map_names_are_pinnable() {
        for name in [
            MAP_JUMP,
            MAP_STATE,
            MAP_EP,
            MAP_CT,
            MAP_DROPS,
            MAP_NAT_FE,
            MAP_NAT_BE,
            MAP_NAT_AFF,
            MAP_FLOW_CACHE,
            PROG_TC,
            PROG_FROM_EP,
            PROG_TO_EP,
            PROG_EPILOGUE,
        ] {
            assert!(!name.contains('.'), "{name}");
            assert!(name.len() <= 15, "{name}");
        }
    }
}
