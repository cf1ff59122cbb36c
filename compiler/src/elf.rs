//! ELF writer: one generated program per object, loadable by bpftool/libbpf.
