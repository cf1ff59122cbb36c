//! Lowering: resolved per-endpoint policy -> IR (polc_ir).
