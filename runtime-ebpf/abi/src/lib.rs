//! The ABI shared by the eBPF runtime (runtime-ebpf) and userspace (compiler, loader):
//! map layouts, the per-CPU scratch state, prog-array slots and verdict codes.
//!
//! Everything here is plain data. The runtime (built for `bpfel-unknown-none`) and the
//! userspace crates compile the same definitions, so a layout change is one edit. The
//! compiler emits raw loads/stores at the `FLOW_*` offsets below; the `offsets_match_layout`
//! test keeps them equal to the struct's real layout.
#![no_std]

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

/// Name of the runtime's tc classifier program in the ELF object.
pub const PROG_TC: &str = "polc_tc";

/// Name of the prog array the runtime tail-calls through (`BPF_MAP_TYPE_PROG_ARRAY`).
///
/// Map names double as pin names under bpffs, so they must not contain '.', and the kernel
/// keeps at most 15 bytes of a map name.
pub const MAP_JUMP: &str = "POLC_JUMP";
/// Name of the per-CPU scratch map (`BPF_MAP_TYPE_PERCPU_ARRAY`, one [`FlowState`] entry).
pub const MAP_STATE: &str = "POLC_STATE";

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
/// Size of [`FlowState`] in bytes (the value size of [`MAP_STATE`]).
pub const FLOW_STATE_SIZE: usize = 64;

// Checked at compile time, for the runtime build too.
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
    fn map_names_are_pinnable() {
        for name in [MAP_JUMP, MAP_STATE, PROG_TC] {
            assert!(!name.contains('.'), "{name}");
            assert!(name.len() <= 15, "{name}");
        }
    }
}
