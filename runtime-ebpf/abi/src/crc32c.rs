//! CRC32c arithmetic for rewriting SCTP ports in place. SCTP's checksum is a CRC32c over the
//! SCTP packet alone (no pseudo-header, so address rewrites leave it valid). A CRC is linear
//! over GF(2): changing the first 4 bytes of a packet of `len` bytes by the XOR `d` changes
//! the CRC by `d * x^(8 len) mod P`, whatever the other bytes are. The runtime computes that
//! with two multiplications and two 256-entry tables instead of reading the whole packet.
//!
//! Polynomials are in the reflected form CRC32c uses: bit 31 is the coefficient of x^0, bit
//! 0 that of x^31, so the first 4 bytes of a packet read as a little-endian `u32` are `d`,
//! and the checksum field read as a little-endian `u32` is the CRC itself.

/// The Castagnoli polynomial, reflected.
pub const POLY: u32 = 0x82f6_3b78;

/// `a * b mod POLY`. Branch-free (the verifier walks straight-line code cheaply).
#[inline(always)]
pub const fn mul(a: u32, b: u32) -> u32 {
    let mut p = 0u32;
    let mut b = b;
    let mut i = 0;
    while i < 32 {
        // Coefficient of x^i in `a` set: add b * x^i.
        p ^= b & 0u32.wrapping_sub((a >> (31 - i)) & 1);
        // b *= x.
        b = (b >> 1) ^ (POLY & 0u32.wrapping_sub(b & 1));
        i += 1;
    }
    p
}

/// `x^(8 n) mod POLY`.
const fn x_pow_8n(n: u32) -> u32 {
    let mut r = 1u32 << 31;
    let mut sq = 1u32 << (31 - 8);
    let mut n = n;
    while n != 0 {
        if n & 1 != 0 {
            r = mul(r, sq);
        }
        sq = mul(sq, sq);
        n >>= 1;
    }
    r
}

const fn table(step: u32) -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = x_pow_8n(i as u32 * step);
        i += 1;
    }
    t
}

/// `X8N_LO[i] = x^(8 i) mod POLY`.
pub const X8N_LO: [u32; 256] = table(1);
/// `X8N_HI[i] = x^(8 * 256 i) mod POLY`.
pub const X8N_HI: [u32; 256] = table(256);

/// The change of the CRC32c of a `len`-byte packet (`len` < 65536) whose first 4 bytes
/// change by the XOR `d` (both read as little-endian `u32`).
#[inline(always)]
pub fn head_change(len: u32, d: u32, lo: &[u32; 256], hi: &[u32; 256]) -> u32 {
    let shift = mul(hi[(len >> 8) as usize & 0xff], lo[len as usize & 0xff]);
    mul(shift, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bit-by-bit CRC32c (init and final XOR all ones), the reference.
    fn crc32c(data: &[u8]) -> u32 {
        let mut c = !0u32;
        for &byte in data {
            c ^= u32::from(byte);
            for _ in 0..8 {
                c = (c >> 1) ^ (POLY & 0u32.wrapping_sub(c & 1));
            }
        }
        !c
    }

    #[test]
    fn the_reference_is_crc32c() {
        // RFC 3720 B.4: 32 bytes of zeros.
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn changing_the_head_changes_the_crc_by_head_change() {
        let mut seed = 0x1234_5678u32;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        for len in [4usize, 5, 12, 16, 255, 256, 257, 1480, 4096, 9000, 65535] {
            let mut p = [0u8; 65535];
            let p = &mut p[..len];
            for b in p.iter_mut() {
                *b = next() as u8;
            }
            let before = crc32c(p);
            let d = next();
            for (i, b) in d.to_le_bytes().iter().enumerate() {
                p[i] ^= b;
            }
            let got = before ^ head_change(len as u32, d, &X8N_LO, &X8N_HI);
            assert_eq!(got, crc32c(p), "len {len}");
        }
    }
}
