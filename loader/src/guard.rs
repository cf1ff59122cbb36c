//! The skip-or-fail gate every kernel test in the project goes through.
//!
//! Kernel tests need `bpf(2)` with the rights to load programs (root or CAP_BPF +
//! CAP_NET_ADMIN). Where that is missing (CI containers, laptops) they skip visibly:
//! [`kernel_test_guard`] prints `SKIP: <reason>` to stderr and returns [`Skip`]. Set
//! `POLC_REQUIRE_KERNEL=1` to turn a skip into a panic, which proves the kernel tests
//! really ran (`POLC_REQUIRE_KERNEL=1 cargo test ...`).

use std::io::Write;
use std::sync::OnceLock;

/// Name of the environment variable that makes kernel tests fail instead of skipping.
pub const REQUIRE_KERNEL_ENV: &str = "POLC_REQUIRE_KERNEL";

/// Marker returned by [`kernel_test_guard`] when the kernel cannot be used; the test should
/// return without asserting anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skip {
    /// Why the kernel cannot be used.
    pub reason: String,
}

/// `r0 = 0; exit`: the smallest valid program, used to probe whether loading works.
const PROBE: [u8; 16] = [
    0xb7, 0, 0, 0, 0, 0, 0, 0, // mov64 r0, 0
    0x95, 0, 0, 0, 0, 0, 0, 0, // exit
];

/// Whether this process can load SCHED_CLS programs, probed once per process.
fn probe() -> &'static Result<(), String> {
    static PROBED: OnceLock<Result<(), String>> = OnceLock::new();
    PROBED.get_or_init(|| match crate::sys::prog_load("polc_probe", &PROBE) {
        Ok(_fd) => Ok(()),
        Err(e) => Err(format!("cannot load eBPF programs ({})", first_line(&e.to_string()))),
    })
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

fn require_kernel() -> bool {
    std::env::var(REQUIRE_KERNEL_ENV).is_ok_and(|v| v == "1")
}

/// Returns `Ok(())` if kernel tests can run here. Otherwise prints `SKIP: <reason>` to
/// stderr and returns [`Skip`], or panics if `POLC_REQUIRE_KERNEL=1`.
///
/// ```no_run
/// #[test]
/// fn runs_in_the_kernel() {
///     if polc_loader::kernel_test_guard().is_err() {
///         return;
///     }
///     // ... bpf(2) work ...
/// }
/// ```
pub fn kernel_test_guard() -> Result<(), Skip> {
    match probe() {
        Ok(()) => Ok(()),
        Err(reason) if require_kernel() => {
            panic!("{REQUIRE_KERNEL_ENV}=1 but {reason}")
        }
        Err(reason) => {
            // Straight to the stderr handle: libtest captures eprintln! of passing tests,
            // and a skip must stay visible.
            let _ = writeln!(
                std::io::stderr(),
                "SKIP: {reason} (set {REQUIRE_KERNEL_ENV}=1 to fail instead)"
            );
            Err(Skip { reason: reason.clone() })
        }
    }
}

/// Returns from the enclosing test (a fn returning `()`) unless kernel tests can run; see
/// [`kernel_test_guard`].
#[macro_export]
macro_rules! require_kernel {
    () => {
        if $crate::kernel_test_guard().is_err() {
            return;
        }
    };
}
