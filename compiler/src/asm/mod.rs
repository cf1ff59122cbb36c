//! The eBPF assembler: typed instructions, encoder/decoder, listings, a label-resolving builder.
