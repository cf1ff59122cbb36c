//! The `__sk_buff` context a tc program receives, laid out with the kernel UAPI offsets.
//!
//! Offsets and the 192-byte size were checked against the running 6.18 kernel's BTF
//! (`bpftool btf dump file /sys/kernel/btf/vmlinux`, `STRUCT '__sk_buff' size=192`).

/// Size of the UAPI `struct __sk_buff`.
pub const SK_BUFF_SIZE: usize = 192;

/// Field offsets in `struct __sk_buff`.
pub mod offset {
    pub const LEN: usize = 0;
    pub const PKT_TYPE: usize = 4;
    pub const MARK: usize = 8;
    pub const QUEUE_MAPPING: usize = 12;
    pub const PROTOCOL: usize = 16;
    pub const VLAN_PRESENT: usize = 20;
    pub const VLAN_TCI: usize = 24;
    pub const VLAN_PROTO: usize = 28;
    pub const PRIORITY: usize = 32;
    pub const INGRESS_IFINDEX: usize = 36;
    pub const IFINDEX: usize = 40;
    pub const TC_INDEX: usize = 44;
    /// `cb[5]`: 48..68.
    pub const CB: usize = 48;
    pub const HASH: usize = 68;
    pub const TC_CLASSID: usize = 72;
    pub const DATA: usize = 76;
    pub const DATA_END: usize = 80;
    pub const NAPI_ID: usize = 84;
    /// `family` .. `local_port` (88..140) are for sk_skb programs only.
    pub const FAMILY: usize = 88;
    pub const DATA_META: usize = 140;
    /// `flow_keys` pointer (8 bytes, 144..152).
    pub const FLOW_KEYS: usize = 144;
    pub const TSTAMP: usize = 152;
    pub const WIRE_LEN: usize = 160;
    pub const GSO_SEGS: usize = 164;
    /// `sk` pointer (8 bytes, 168..176).
    pub const SK: usize = 168;
    pub const GSO_SIZE: usize = 176;
    pub const TSTAMP_TYPE: usize = 180;
    pub const HWTSTAMP: usize = 184;
}

/// The `__sk_buff` fields the vm engine lets a test set. `len`, `data`, `data_end` and
/// `data_meta` come from the packet and are not settable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SkBuff {
    pub pkt_type: u32,
    pub mark: u32,
    pub queue_mapping: u32,
    /// EtherType in host order (0x0800 for IPv4); stored in network order like the kernel's
    /// `skb->protocol`.
    pub protocol: u16,
    pub vlan_present: u32,
    pub vlan_tci: u32,
    pub vlan_proto: u32,
    pub priority: u32,
    pub ingress_ifindex: u32,
    pub ifindex: u32,
    pub tc_index: u32,
    pub cb: [u32; 5],
    pub hash: u32,
    pub tc_classid: u32,
    pub tstamp: u64,
    pub gso_segs: u32,
    pub gso_size: u32,
}

impl SkBuff {
    /// The context bytes a program sees for a packet of `packet_len` bytes. `data`,
    /// `data_end` and `data_meta` are left 0: the vm engine gives programs real pointers to
    /// the packet through its own rewrite of those loads (see `vm::prepare`).
    pub fn to_uapi_bytes(&self, packet_len: u32) -> [u8; SK_BUFF_SIZE] {
        let mut out = [0u8; SK_BUFF_SIZE];
        let mut put = |at: usize, value: u32| {
            if let Some(dst) = out.get_mut(at..at + 4) {
                dst.copy_from_slice(&value.to_ne_bytes());
            }
        };
        put(offset::LEN, packet_len);
        put(offset::PKT_TYPE, self.pkt_type);
        put(offset::MARK, self.mark);
        put(offset::QUEUE_MAPPING, self.queue_mapping);
        put(offset::PROTOCOL, u32::from(self.protocol.to_be()));
        put(offset::VLAN_PRESENT, self.vlan_present);
        put(offset::VLAN_TCI, self.vlan_tci);
        put(offset::VLAN_PROTO, self.vlan_proto);
        put(offset::PRIORITY, self.priority);
        put(offset::INGRESS_IFINDEX, self.ingress_ifindex);
        put(offset::IFINDEX, self.ifindex);
        put(offset::TC_INDEX, self.tc_index);
        for (i, value) in self.cb.iter().enumerate() {
            put(offset::CB + 4 * i, *value);
        }
        put(offset::HASH, self.hash);
        put(offset::TC_CLASSID, self.tc_classid);
        put(offset::TSTAMP, self.tstamp as u32);
        put(offset::TSTAMP + 4, (self.tstamp >> 32) as u32);
        put(offset::WIRE_LEN, packet_len);
        put(offset::GSO_SEGS, self.gso_segs);
        put(offset::GSO_SIZE, self.gso_size);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32_at(bytes: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn fields_land_at_uapi_offsets() {
        let skb = SkBuff {
            mark: 0xabcd,
            protocol: 0x0800,
            ifindex: 7,
            cb: [1, 2, 3, 4, 5],
            tc_classid: 9,
            tstamp: 0x1_0000_0002,
            ..SkBuff::default()
        };
        let bytes = skb.to_uapi_bytes(54);
        assert_eq!(u32_at(&bytes, offset::LEN), 54);
        assert_eq!(u32_at(&bytes, offset::MARK), 0xabcd);
        // skb->protocol is __be16: the bytes are 08 00.
        assert_eq!(&bytes[offset::PROTOCOL..offset::PROTOCOL + 4], &[0x08, 0, 0, 0]);
        assert_eq!(u32_at(&bytes, offset::IFINDEX), 7);
        assert_eq!(u32_at(&bytes, 64), 5);
        assert_eq!(u32_at(&bytes, offset::TC_CLASSID), 9);
        assert_eq!(u32_at(&bytes, offset::DATA), 0);
        assert_eq!(u64::from_ne_bytes(bytes[152..160].try_into().unwrap()), 0x1_0000_0002);
        assert_eq!(u32_at(&bytes, offset::WIRE_LEN), 54);
    }
}
