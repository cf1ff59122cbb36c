//! The runtime and a polc-assembled policy-like program together in the kernel: the runtime
//! (its from-endpoint hook, for an endpoint registered on lo) tail-calls the program, which
//! reads and writes the per-CPU FlowState; an empty slot drops (fail closed); a program the
//! verifier rejects reports the verifier log. The full runtime behaviour (parsing,
//! conntrack, both hooks) is tested in runtime_fastpath.rs.
//!
//! Kernel tests: they print `SKIP: ...` without bpf(2) rights, and fail instead with
//! `POLC_REQUIRE_KERNEL=1`.

use std::os::fd::{AsFd, AsRawFd};

use polc::asm::{helper, Asm, Cond, Insn, Reg, Size};
use polc_abi::{
    stage, verdict, Endpoint, FlowState, SLOT_FIRST_POLICY, STATE_KEY, TC_ACT_OK, TC_ACT_SHOT,
};
use polc_loader::sys::{self, TestRun};
use polc_loader::{require_kernel, Runtime};

/// The rule id the test program reports as deciding.
const RULE_ID: i32 = 42;
/// What the test program returns when the runtime did not prepare the state: a code
/// neither the runtime (TC_ACT_SHOT) nor the allow path (TC_ACT_OK) returns.
const NOT_PREPARED: i32 = polc_abi::tc_act::UNSPEC;

fn off(field: usize) -> i16 {
    i16::try_from(field).expect("FlowState offsets are small")
}

/// A policy-shaped program: look up this CPU's FlowState in the runtime's scratch map;
/// if the runtime marked it (stage RUNTIME, verdict UNSET) write ALLOW by rule 42, stage
/// POLICY, and return TC_ACT_OK; otherwise return NOT_PREPARED. A failed lookup drops.
fn verdict_program(state_map_fd: i32) -> Vec<u8> {
    let mut a = Asm::new();
    let drop = a.label();
    let not_prepared = a.label();
    a.comment("r0 = bpf_map_lookup_elem(&POLC_STATE, &STATE_KEY)");
    a.push(Insn::st(Size::W, Reg::FP, -4, STATE_KEY as i32));
    a.push(Insn::mov64(Reg::R2, Reg::FP));
    a.push(Insn::alu64(polc::asm::AluOp::Add, Reg::R2, -4));
    a.push(Insn::ld_map_fd(Reg::R1, state_map_fd as u32));
    a.push(Insn::call(helper::MAP_LOOKUP_ELEM));
    a.jump_if(Cond::Eq, Reg::R0, 0, drop);
    a.comment("only decide on a record the runtime prepared");
    a.push(Insn::ldx(Size::W, Reg::R1, Reg::R0, off(polc_abi::FLOW_STAGE)));
    a.jump_if(Cond::Ne, Reg::R1, stage::RUNTIME as i32, not_prepared);
    a.push(Insn::ldx(Size::W, Reg::R1, Reg::R0, off(polc_abi::FLOW_VERDICT)));
    a.jump_if(Cond::Ne, Reg::R1, verdict::UNSET as i32, not_prepared);
    a.comment("allow, decided by rule 42");
    a.push(Insn::st(Size::W, Reg::R0, off(polc_abi::FLOW_VERDICT), verdict::ALLOW as i32));
    a.push(Insn::st(Size::W, Reg::R0, off(polc_abi::FLOW_RULE_ID), RULE_ID));
    a.push(Insn::st(Size::W, Reg::R0, off(polc_abi::FLOW_STAGE), stage::POLICY as i32));
    a.push(Insn::mov64(Reg::R0, TC_ACT_OK));
    a.push(Insn::exit());
    a.bind(not_prepared);
    a.push(Insn::mov64(Reg::R0, NOT_PREPARED));
    a.push(Insn::exit());
    a.bind(drop);
    a.push(Insn::mov64(Reg::R0, TC_ACT_SHOT));
    a.push(Insn::exit());
    let prog = a.assemble().expect("the test program assembles");
    prog.try_to_bytes().expect("the test program encodes")
}

/// A 54-byte Ethernet/IPv4/TCP SYN, 10.0.0.1:40000 -> 10.0.0.2:443.
fn tcp_syn() -> Vec<u8> {
    let mut p = Vec::with_capacity(54);
    p.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]); // dst MAC
    p.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]); // src MAC
    p.extend_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    p.extend_from_slice(&[0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, 6, 0, 0]); // ver/ihl .. proto 6
    p.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
    p.extend_from_slice(&40000u16.to_be_bytes());
    p.extend_from_slice(&443u16.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]); // SYN
    p
}

/// Makes lo (ifindex 1, what a test run without ctx sees) the endpoint 10.0.0.1 whose
/// ingress and egress policies, of both families, are all in [`SLOT_FIRST_POLICY`].
fn register_lo(rt: &Runtime) {
    let mut ep = Endpoint {
        endpoint_id: 1,
        ingress_slot: SLOT_FIRST_POLICY,
        egress_slot: SLOT_FIRST_POLICY,
        flags: 0,
        ingress_slot_v6: SLOT_FIRST_POLICY,
        egress_slot_v6: SLOT_FIRST_POLICY,
        ..Endpoint::default()
    };
    // The pod is the test packet's source (a test run is the from-endpoint hook).
    ep.set_address(std::net::IpAddr::from([10, 0, 0, 1]));
    rt.set_endpoint(1, &ep).expect("register the endpoint");
}

/// The FlowStates whose stage is `want`, with their CPU.
fn states_at(rt: &Runtime, want: u32) -> Vec<(usize, FlowState)> {
    let states = rt.flow_states().expect("read the per-CPU FlowState");
    states.into_iter().enumerate().filter(|(_, s)| s.stage == want).collect()
}

#[test]
fn runtime_tail_calls_the_policy_program_and_fails_closed_without_it() {
    require_kernel!();
    let rt = Runtime::load().expect("load the runtime");
    register_lo(&rt);
    let state_fd = rt.state_map_fd().expect("state map").as_raw_fd();
    let prog = sys::prog_load("polc_t_verdict", &verdict_program(state_fd))
        .unwrap_or_else(|e| panic!("{e}"));
    rt.set_slot(SLOT_FIRST_POLICY, prog.as_fd()).expect("fill the policy slot");

    let packet = tcp_syn();
    let out = rt.test_run(&TestRun { data: &packet, ctx: None, repeat: 1 }).expect("test run");
    assert_eq!(out.retval as i32, TC_ACT_OK, "the policy program's return code");
    let decided = states_at(&rt, stage::POLICY);
    assert_eq!(decided.len(), 1, "exactly the running CPU's state is written: {decided:?}");
    let (_, st) = decided[0];
    assert_eq!((st.verdict, st.rule_id), (verdict::ALLOW, RULE_ID as u32));
    assert_eq!(out.data_out, packet, "the packet is not modified");

    // Without a policy program the tail call fails and the runtime drops.
    assert!(rt.clear_slot(SLOT_FIRST_POLICY).expect("clear the slot"));
    let out = rt.test_run(&TestRun { data: &packet, ctx: None, repeat: 1 }).expect("test run");
    assert_eq!(out.retval as i32, TC_ACT_SHOT, "fail closed");
    let prepared = states_at(&rt, stage::RUNTIME);
    assert_eq!(prepared.len(), 1, "{prepared:?}");
    assert_eq!(prepared[0].1.verdict, verdict::UNSET);
    assert_eq!(prepared[0].1.rule_id, polc_abi::RULE_ID_NONE);
}

#[test]
fn the_test_program_alone_refuses_an_unprepared_state() {
    // Run directly, without the runtime preparing the record, the program must not decide:
    // this shows the first test's verdict depends on the state the runtime wrote.
    require_kernel!();
    let rt = Runtime::load().expect("load the runtime");
    let prog = sys::prog_load(
        "polc_t_verdict",
        &verdict_program(rt.state_map_fd().expect("state map").as_raw_fd()),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let packet = tcp_syn();
    // A fresh map is all zeroes: stage NONE.
    let out = sys::prog_test_run(prog.as_fd(), &TestRun { data: &packet, ctx: None, repeat: 1 })
        .expect("test run");
    assert_eq!(out.retval as i32, NOT_PREPARED);
    assert!(states_at(&rt, stage::POLICY).is_empty());
}

#[test]
fn rejected_program_reports_the_verifier_log() {
    require_kernel!();
    let mut a = Asm::new();
    a.comment("return r3, which is never written: the verifier refuses the read");
    a.push(Insn::mov64(Reg::R0, Reg::R3));
    a.push(Insn::exit());
    let bytes = a.assemble().expect("assembles").try_to_bytes().expect("encodes");
    let err = sys::prog_load("polc_t_bad", &bytes).expect_err("the verifier rejects it");
    let msg = err.to_string();
    assert!(msg.contains("R3 !read_ok"), "{msg}");
    assert_eq!(err.errno(), Some(libc::EACCES), "{msg}");
}

/// Measures the runtime + tail call + policy program, and the runtime alone (empty slot),
/// with the kernel's own clock. Prints the numbers (`-- --nocapture` to see them).
#[test]
fn test_run_timing() {
    require_kernel!();
    const REPEAT: u32 = 200_000;
    let rt = Runtime::load().expect("load the runtime");
    register_lo(&rt);
    let prog = sys::prog_load(
        "polc_t_verdict",
        &verdict_program(rt.state_map_fd().expect("state map").as_raw_fd()),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let packet = tcp_syn();
    let run = TestRun { data: &packet, ctx: None, repeat: REPEAT };
    let median = |rt: &Runtime, want: i32| {
        let mut ns: Vec<u32> = (0..5)
            .map(|_| {
                let out = rt.test_run(&run).expect("test run");
                assert_eq!(out.retval as i32, want);
                out.duration_ns
            })
            .collect();
        ns.sort_unstable();
        ns[2]
    };
    rt.set_slot(SLOT_FIRST_POLICY, prog.as_fd()).expect("fill the policy slot");
    let with_policy = median(&rt, TC_ACT_OK);
    rt.clear_slot(SLOT_FIRST_POLICY).expect("clear the slot");
    let empty_slot = median(&rt, TC_ACT_SHOT);
    eprintln!(
        "BPF_PROG_TEST_RUN, {REPEAT} runs x5, median ns/run: runtime+tail call+policy \
         {with_policy}, runtime with empty slot {empty_slot}"
    );
}
