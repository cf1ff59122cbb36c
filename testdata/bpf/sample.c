// A small BPF object built by clang, used to check polc's disassembler against llvm-objdump.
// Build: scripts/build-testdata-bpf.sh (clang-22 -O2 -target bpf -mcpu=v4).
// The inline asm makes sure every instruction form polc emits or decodes appears at least once.
typedef unsigned long long u64;
typedef unsigned int u32;

struct {
	int (*type)[1];
	int (*max_entries)[16];
	u32 *key;
	u64 *value;
} counters __attribute__((section(".maps"), used));

__attribute__((section("tc"), used)) int sample(void *ctx)
{
	u32 key = 3;
	u64 *v = ((void *(*)(void *, const void *))1)(&counters, &key);
	if (!v)
		return 2;
	__sync_fetch_and_add(v, 1);
	asm volatile(
		"r1 = 0x1122334455667788 ll\n"
		"r2 = r1\n"
		"w3 = w2\n"
		"r2 += 5\n"
		"r2 -= r3\n"
		"r2 *= 7\n"
		"r2 /= 3\n"
		"r2 s/= 3\n"
		"r2 %%= r3\n"
		"r2 s%%= r3\n"
		"w2 |= 0x10\n"
		"r2 &= 0xff\n"
		"r2 <<= 2\n"
		"r2 >>= 1\n"
		"r2 s>>= 1\n"
		"r2 ^= r1\n"
		"r2 = -r2\n"
		"w2 = -w2\n"
		"r2 = (s8)r3\n"
		"r2 = (s16)r3\n"
		"r2 = (s32)r3\n"
		"w2 = (s8)w3\n"
		"r2 = be16 r2\n"
		"r2 = be32 r2\n"
		"r2 = le64 r2\n"
		"r2 = bswap16 r2\n"
		"r2 = bswap64 r2\n"
		"r4 = *(u8 *)(r10 - 8)\n"
		"r4 = *(u16 *)(r10 - 8)\n"
		"r4 = *(u32 *)(r10 - 8)\n"
		"r4 = *(u64 *)(r10 - 8)\n"
		"r4 = *(s8 *)(r10 - 8)\n"
		"r4 = *(s16 *)(r10 - 8)\n"
		"r4 = *(s32 *)(r10 - 8)\n"
		"*(u8 *)(r10 - 16) = r4\n"
		"*(u16 *)(r10 - 16) = r4\n"
		"*(u32 *)(r10 - 16) = r4\n"
		"*(u64 *)(r10 - 16) = r4\n"
		"*(u32 *)(r10 - 16) = 7\n"
		"*(u64 *)(r10 - 16) = -1\n"
		"if r2 == 6 goto +1\n"
		"if r2 != r3 goto +1\n"
		"if r2 > 6 goto +1\n"
		"if r2 >= 6 goto +1\n"
		"if r2 < 6 goto +1\n"
		"if r2 <= 6 goto +1\n"
		"if r2 s> 6 goto +1\n"
		"if r2 s>= r3 goto +1\n"
		"if r2 s< -6 goto +1\n"
		"if r2 s<= 6 goto +1\n"
		"if r2 & 0x6 goto +1\n"
		"if w2 == 6 goto +1\n"
		"if w2 != w3 goto +1\n"
		"if w2 s< 6 goto +1\n"
		"goto +0\n"
		"gotol +0\n"
		"lock *(u64 *)(r10 - 16) += r4\n"
		"lock *(u32 *)(r10 - 16) |= w4\n"
		"lock *(u64 *)(r10 - 16) &= r4\n"
		"lock *(u64 *)(r10 - 16) ^= r4\n"
		"r4 = atomic_fetch_add((u64 *)(r10 - 16), r4)\n"
		"w4 = atomic_fetch_or((u32 *)(r10 - 16), w4)\n"
		"r4 = xchg_64(r10 - 16, r4)\n"
		"r0 = cmpxchg_64(r10 - 16, r0, r4)\n"
		"w0 = cmpxchg32_32(r10 - 16, w0, w4)\n"
		"r4 = atomic_fetch_xor((u64 *)(r10 - 16), r4)\n"
		"w4 = xchg32_32(r10 - 16, w4)\n"
		"w4 = load_acquire((u32 *)(r10 - 16))\n"
		"r4 = load_acquire((u64 *)(r10 - 16))\n"
		"store_release((u64 *)(r10 - 16), r4)\n"
		"r6 = r1\n"
		"r0 = *(u8 *)skb[12]\n"
		"r0 = *(u16 *)skb[12]\n"
		"r0 = *(u32 *)skb[r4]\n"
		"may_goto +0\n"
		"r0 = 0\n"
		"w0 = 1\n"
		::: "r0", "r1", "r2", "r3", "r4", "r6", "memory");
	return 0;
}

char _license[] __attribute__((section("license"), used)) = "GPL";
