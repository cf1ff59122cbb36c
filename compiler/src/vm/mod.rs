//! The `vm` engine: runs generated programs under rbpf with mocked maps and helpers.
