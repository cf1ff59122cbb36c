//! End to end in network namespaces: a node namespace with veth pairs to three pod
//! namespaces, `polc attach` on the host-side interfaces, real TCP/UDP/ICMP between the
//! pods, a policy swap under a live TCP connection, `polc status`, `polc dump`, and
//! `polc detach` leaving no tc programs and no pins.
//!
//! Root only: without bpf(2)/netns rights the tests print `SKIP: ...` (and fail with
//! `POLC_REQUIRE_KERNEL=1`). Every name carries the test's pid and a counter; traffic only
//! flows between the namespaces the test creates; a Drop guard removes them (and the pins)
//! even when an assertion fails. Every socket operation has a timeout.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use polc_loader::bpffs::{self, ATTACH_TCX_EGRESS, ATTACH_TCX_INGRESS};
use polc_loader::require_kernel;

const POLC: &str = env!("CARGO_BIN_EXE_polc");
/// How long a denied flow is given before we call it dropped.
const DENY_WAIT: Duration = Duration::from_millis(700);
const ALLOW_WAIT: Duration = Duration::from_secs(3);

// ------------------------------------------------------------------ shell helpers

fn run(cmd: &str, args: &[&str]) -> Output {
    let out =
        Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn ip(args: &[&str]) {
    run("ip", args);
}

/// Runs `f` on a fresh thread that joined network namespace `ns`; sockets it creates live
/// there and can be used from any thread afterwards.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: a valid netns fd; affects only this thread.
        let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap_or_else(|_| panic!("thread in {ns} panicked"))
}

/// Runs the polc binary inside network namespace `ns` (network only: the mount namespace,
/// and so the host's bpffs, stay the same, unlike `ip netns exec`).
fn polc_in(ns: &str, args: &[&str]) -> Output {
    let path = format!("/run/netns/{ns}");
    let file = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let fd = file.as_raw_fd();
    let mut cmd = Command::new(POLC);
    cmd.args(args);
    // SAFETY: setns is async-signal-safe; fd stays open in the parent until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let out = cmd.output().expect("run polc");
    drop(file);
    out
}

fn polc_ok(ns: &str, args: &[&str]) -> String {
    let out = polc_in(ns, args);
    assert!(
        out.status.success(),
        "polc {}: exit {:?}\n{}",
        args.join(" "),
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ------------------------------------------------------------------ the topology

struct Pod {
    name: &'static str,
    ns: String,
    ifname: String,
    addr: Ipv4Addr,
    /// Set in dual-stack topologies: the pod's IPv6 address (configured in its namespace;
    /// whether the cluster YAML lists it is up to the test).
    addr6: Option<Ipv6Addr>,
}

/// Node + pod namespaces; removed (with polc's pins) on drop.
struct Topology {
    node: String,
    pods: Vec<Pod>,
    pin: PathBuf,
    /// Where the test writes its cluster YAML.
    files: PathBuf,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl Topology {
    fn new(pods: &[&'static str]) -> Topology {
        Topology::build(pods, false)
    }

    /// Like [`Topology::new`], plus IPv6: pod i has fd77::i+1/128 (no DAD), a static
    /// link-local gateway fe80::1 at the host veth's MAC, and the node a static neighbour
    /// entry per pod, so no neighbour discovery is needed in either direction.
    fn dual_stack(pods: &[&'static str]) -> Topology {
        Topology::build(pods, true)
    }

    fn build(pods: &[&'static str], v6: bool) -> Topology {
        let tag =
            format!("{}{}", std::process::id() % 100_000, COUNTER.fetch_add(1, Ordering::SeqCst));
        let node = format!("polcn{tag}");
        let pin = PathBuf::from(format!("/sys/fs/bpf/polc_e2e_{tag}"));
        let files = std::env::temp_dir().join(format!("polc_e2e_{tag}"));
        let mut topo = Topology { node: node.clone(), pods: Vec::new(), pin, files };
        ip(&["netns", "add", &node]);
        run("ip", &["netns", "exec", &node, "sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        let v6_sysctls: &[&str] = if v6 {
            &[
                "net.ipv6.conf.all.forwarding=1",
                "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0",
            ]
        } else {
            &["net.ipv6.conf.all.disable_ipv6=1"]
        };
        for s in v6_sysctls {
            run("ip", &["netns", "exec", &node, "sysctl", "-qw", s]);
        }
        ip(&["-n", &node, "link", "set", "lo", "up"]);
        for (i, name) in pods.iter().enumerate() {
            let ns = format!("polcp{tag}{i}");
            let ifname = format!("pv{tag}{i}");
            let addr = Ipv4Addr::new(10, 77, 0, i as u8 + 1);
            let addr6 = v6.then(|| Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, i as u16 + 1));
            // Registered first so a failure below still cleans this namespace up.
            topo.pods.push(Pod { name, ns: ns.clone(), ifname: ifname.clone(), addr, addr6 });
            ip(&["netns", "add", &ns]);
            let pod_sysctl = if v6 {
                "net.ipv6.conf.default.accept_dad=0"
            } else {
                "net.ipv6.conf.all.disable_ipv6=1"
            };
            run("ip", &["netns", "exec", &ns, "sysctl", "-qw", pod_sysctl]);
            let pod_mac = format!("02:77:00:00:00:{:02x}", i + 1);
            ip(&[
                "-n",
                &node,
                "link",
                "add",
                &ifname,
                "address",
                "ee:ee:ee:ee:ee:ee",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "address",
                &pod_mac,
                "netns",
                &ns,
            ]);
            ip(&["-n", &node, "link", "set", &ifname, "up"]);
            ip(&["-n", &node, "route", "add", &format!("{addr}/32"), "dev", &ifname]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            ip(&["-n", &ns, "addr", "add", &format!("{addr}/32"), "dev", "eth0"]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            // Calico-style: a link-local gateway with a static neighbour entry.
            ip(&["-n", &ns, "route", "add", "169.254.1.1", "dev", "eth0"]);
            ip(&["-n", &ns, "route", "add", "default", "via", "169.254.1.1", "dev", "eth0"]);
            ip(&[
                "-n",
                &ns,
                "neigh",
                "add",
                "169.254.1.1",
                "lladdr",
                "ee:ee:ee:ee:ee:ee",
                "dev",
                "eth0",
                "nud",
                "permanent",
            ]);
            if let Some(a6) = addr6 {
                let a6 = a6.to_string();
                let gw = ["lladdr", "ee:ee:ee:ee:ee:ee", "dev", "eth0", "nud", "permanent"];
                ip(&["-n", &ns, "-6", "addr", "add", &format!("{a6}/128"), "dev", "eth0", "nodad"]);
                ip(&[&["-n", &ns, "-6", "neigh", "add", "fe80::1"][..], &gw[..]].concat());
                ip(&["-n", &ns, "-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0"]);
                ip(&["-n", &node, "-6", "route", "add", &format!("{a6}/128"), "dev", &ifname]);
                let nb = ["lladdr", &pod_mac, "dev", &ifname, "nud", "permanent"];
                ip(&[&["-n", &node, "-6", "neigh", "add", &a6][..], &nb[..]].concat());
            }
        }
        topo
    }

    fn pod(&self, name: &str) -> &Pod {
        self.pods.iter().find(|p| p.name == name).expect("pod")
    }

    fn endpoint_args(&self) -> Vec<String> {
        self.pods
            .iter()
            .flat_map(|p| ["--endpoint".to_string(), format!("e2e/{}={}", p.name, p.ifname)])
            .collect()
    }

    fn pin(&self) -> &str {
        self.pin.to_str().expect("utf-8 pin path")
    }

    /// Pod YAML for the cluster file (IPv4 only).
    fn pods_yaml(&self) -> String {
        self.pods_yaml_with_v6(&[])
    }

    /// Pod YAML listing the IPv6 address too (`podIPs`) for the pods named in `v6`.
    fn pods_yaml_with_v6(&self, v6: &[&str]) -> String {
        let mut y = String::from("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: e2e\n");
        for p in &self.pods {
            let ips = match p.addr6 {
                Some(a6) if v6.contains(&p.name) => {
                    format!("  podIPs:\n  - ip: {}\n  - ip: {a6}\n", p.addr)
                }
                _ => String::new(),
            };
            y.push_str(&format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {n}\n  namespace: e2e\n  \
                 labels:\n    app: {n}\nspec:\n  containers:\n  - name: c\n    image: x\n\
                 status:\n  podIP: {a}\n{ips}",
                n = p.name,
                a = p.addr
            ));
        }
        y
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if self.pin.exists() {
            let pin = self.pin.clone();
            let node = self.node.clone();
            let _ = thread::spawn(move || {
                if let Ok(f) = File::open(format!("/run/netns/{node}")) {
                    // SAFETY: valid fd, this thread only.
                    unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
                }
                let _ = polc_loader::dataplane::detach(&pin);
            })
            .join();
        }
        for p in &self.pods {
            let _ = Command::new("ip").args(["netns", "del", &p.ns]).output();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.node]).output();
        if self.pin.exists() {
            let _ = std::fs::remove_dir_all(&self.pin);
        }
        let _ = std::fs::remove_dir_all(&self.files);
    }
}

// ------------------------------------------------------------------ traffic

/// A TCP server in `pod` that echoes every read back; runs until the process ends.
fn tcp_echo_server(pod: &Pod, port: u16) {
    tcp_echo_server_at(pod, SocketAddr::from((pod.addr, port)));
}

/// [`tcp_echo_server`] on any of the pod's addresses.
fn tcp_echo_server_at(pod: &Pod, addr: SocketAddr) {
    let listener = in_netns(&pod.ns, move || TcpListener::bind(addr).expect("bind"));
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || {
                let mut s = stream;
                let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                let mut buf = [0u8; 512];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
}

fn udp_echo_server(pod: &Pod, port: u16) {
    let addr = SocketAddr::from((pod.addr, port));
    let sock = in_netns(&pod.ns, move || UdpSocket::bind(addr).expect("bind udp"));
    thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(&buf[..n], from);
        }
    });
}

/// Connects from `from` and exchanges one message; true if the echo came back.
fn tcp_ok(from: &Pod, to: &Pod, port: u16) -> bool {
    match tcp_connect(from, to, port) {
        Some(mut s) => exchange(&mut s, b"hello"),
        None => false,
    }
}

fn tcp_connect(from: &Pod, to: &Pod, port: u16) -> Option<TcpStream> {
    tcp_connect_to(from, SocketAddr::from((to.addr, port)))
}

/// Like [`tcp_ok`] to any address of the destination (e.g. its IPv6 one).
fn tcp_ok_to(from: &Pod, addr: SocketAddr) -> bool {
    match tcp_connect_to(from, addr) {
        Some(mut s) => exchange(&mut s, b"hello"),
        None => false,
    }
}

fn tcp_connect_to(from: &Pod, addr: SocketAddr) -> Option<TcpStream> {
    let s = in_netns(&from.ns, move || TcpStream::connect_timeout(&addr, DENY_WAIT).ok())?;
    s.set_read_timeout(Some(ALLOW_WAIT)).ok()?;
    s.set_write_timeout(Some(ALLOW_WAIT)).ok()?;
    Some(s)
}

fn exchange(s: &mut TcpStream, msg: &[u8]) -> bool {
    let mut buf = vec![0u8; msg.len()];
    s.write_all(msg).is_ok() && s.read_exact(&mut buf).is_ok() && buf == msg
}

fn udp_ok(from: &Pod, to: &Pod, port: u16) -> bool {
    let dst = SocketAddr::from((to.addr, port));
    let src = SocketAddr::from((from.addr, 0));
    let sock = in_netns(&from.ns, move || UdpSocket::bind(src).expect("bind udp client"));
    sock.set_read_timeout(Some(DENY_WAIT)).expect("timeout");
    if sock.send_to(b"ping", dst).is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(sock.recv_from(&mut buf), Ok((4, f)) if f == dst && &buf[..4] == b"ping")
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// One ICMP echo from `from` to `to` over a raw socket; true if the reply came back.
fn ping_ok(from: &Pod, to: &Pod) -> bool {
    let fd = in_netns(&from.ns, || {
        // SAFETY: plain socket(2).
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        // SAFETY: a fresh fd we own.
        unsafe { OwnedFd::from_raw_fd(fd) }
    });
    let id = (std::process::id() as u16) ^ 0x5a5a;
    let mut pkt = vec![8u8, 0, 0, 0];
    pkt.extend_from_slice(&id.to_be_bytes());
    pkt.extend_from_slice(&1u16.to_be_bytes());
    pkt.extend_from_slice(b"polc-e2e");
    let c = checksum(&pkt);
    pkt[2..4].copy_from_slice(&c.to_be_bytes());
    let dst = libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(to.addr.octets()) },
        sin_zero: [0; 8],
    };
    // SAFETY: valid buffer and address.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            pkt.as_ptr().cast(),
            pkt.len(),
            0,
            (&dst as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        )
    };
    if sent < 0 {
        return false;
    }
    let deadline = Instant::now() + DENY_WAIT;
    let mut buf = [0u8; 256];
    while Instant::now() < deadline {
        let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let left = deadline.saturating_duration_since(Instant::now()).as_millis() as i32;
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, left.max(1)) } <= 0 {
            return false;
        }
        // SAFETY: valid buffer.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 28 {
            continue;
        }
        let ihl = usize::from(buf[0] & 0x0f) * 4;
        let src = Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]);
        let icmp = &buf[ihl..n as usize];
        if src == to.addr && icmp.len() >= 8 && icmp[0] == 0 && icmp[4..6] == id.to_be_bytes() {
            return true;
        }
    }
    false
}

// ------------------------------------------------------------------ policies

/// v1: server accepts TCP 8080, UDP 5353 and ICMP echo from client only; client has a
/// default-deny ingress (its replies must come back through conntrack); other: no policy.
const POLICY_V1: &str = r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata:
  name: server-ingress
  namespace: e2e
spec:
  selector: app == 'server'
  types: [Ingress]
  ingress:
  - action: Allow
    protocol: TCP
    source:
      selector: app == 'client'
    destination:
      ports: [8080]
  - action: Allow
    protocol: UDP
    source:
      selector: app == 'client'
    destination:
      ports: [5353]
  - action: Allow
    protocol: ICMP
    source:
      selector: app == 'client'
    icmp:
      type: 8
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: client-default-deny
  namespace: e2e
spec:
  podSelector:
    matchLabels:
      app: client
  policyTypes: [Ingress]
"#;

/// v2: TCP 8080 on the server now only from `other`; the client loses it.
const POLICY_V2: &str = r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata:
  name: server-ingress
  namespace: e2e
spec:
  selector: app == 'server'
  types: [Ingress]
  ingress:
  - action: Allow
    protocol: TCP
    source:
      selector: app == 'other'
    destination:
      ports: [8080]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: client-default-deny
  namespace: e2e
spec:
  podSelector:
    matchLabels:
      app: client
  policyTypes: [Ingress]
"#;

fn write_cluster(dir: &Path, topo: &Topology, policy: &str) -> PathBuf {
    std::fs::create_dir_all(dir).expect("mkdir");
    let f = dir.join("cluster.yaml");
    std::fs::write(&f, format!("{}---{policy}", topo.pods_yaml())).expect("write yaml");
    f
}

fn attach(topo: &Topology, file: &Path) -> serde_json::Value {
    let mut args = vec![
        "attach".to_string(),
        "-f".into(),
        file.display().to_string(),
        "--pin-path".into(),
        topo.pin().into(),
        "--ct-entries".into(),
        "16384".into(),
        "--output".into(),
        "json".into(),
    ];
    args.extend(topo.endpoint_args());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let t = Instant::now();
    let out = polc_ok(&topo.node, &args);
    eprintln!("polc attach: {} ms wall (process included)", t.elapsed().as_millis());
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("attach json: {e}\n{out}"))
}

fn status(topo: &Topology) -> serde_json::Value {
    let out = polc_ok(&topo.node, &["status", "--pin-path", topo.pin(), "--output", "json"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("status json: {e}\n{out}"))
}

fn tcx_programs(topo: &Topology, ifname: &str) -> (Vec<u32>, Vec<u32>) {
    let ifname = ifname.to_string();
    in_netns(&topo.node, move || {
        let idx = bpffs::ifindex(&ifname).expect("ifindex");
        (
            bpffs::tcx_query(idx, ATTACH_TCX_INGRESS).expect("query ingress"),
            bpffs::tcx_query(idx, ATTACH_TCX_EGRESS).expect("query egress"),
        )
    })
}

fn netns_ready() -> bool {
    let ok = Command::new("ip").args(["netns", "list"]).output().is_ok_and(|o| o.status.success());
    if !ok {
        let msg = "SKIP: `ip netns` is not usable here";
        if std::env::var("POLC_REQUIRE_KERNEL").is_ok_and(|v| v == "1") {
            panic!("POLC_REQUIRE_KERNEL=1 but {msg}");
        }
        eprintln!("{msg}");
    }
    ok
}

// ------------------------------------------------------------------ the tests

#[test]
fn policy_is_enforced_swapped_under_a_live_connection_reported_and_detached() {
    require_kernel!();
    if !netns_ready() {
        return;
    }
    let started = Instant::now();
    let topo = Topology::new(&["client", "server", "other"]);
    let (client, server, other) = (topo.pod("client"), topo.pod("server"), topo.pod("other"));
    tcp_echo_server(server, 8080);
    tcp_echo_server(server, 9090);
    tcp_echo_server(client, 7070);
    udp_echo_server(server, 5353);

    // Before attach everything flows (proves the topology, so drops below mean policy).
    assert!(tcp_ok(other, server, 8080), "topology: other -> server:8080 without policy");
    assert!(tcp_ok(server, client, 7070), "topology: server -> client:7070 without policy");

    let dir = topo.files.clone();
    let v1 = write_cluster(&dir, &topo, POLICY_V1);
    let report = attach(&topo, &v1);
    assert_eq!(report["generation"], 1, "{report}");
    assert_eq!(report["runtime_loaded"], true);
    assert_eq!(report["endpoints"].as_array().map(Vec::len), Some(3));
    eprintln!("attach v1 (library time): {} us", report["elapsed_us"]);

    // Verdicts of v1.
    assert!(tcp_ok(client, server, 8080), "client -> server:8080 allowed");
    assert!(!tcp_ok(client, server, 9090), "client -> server:9090 denied (port)");
    assert!(!tcp_ok(other, server, 8080), "other -> server:8080 denied (source)");
    assert!(udp_ok(client, server, 5353), "client -> server udp 5353 allowed (reply via ct)");
    assert!(!udp_ok(other, server, 5353), "other -> server udp 5353 denied");
    assert!(ping_ok(client, server), "client -> server ICMP echo allowed");
    assert!(!ping_ok(other, server), "other -> server ICMP echo denied");
    assert!(!tcp_ok(server, client, 7070), "server -> client denied (client default-deny)");
    assert!(!ping_ok(other, client), "other -> client ICMP denied (client default-deny)");

    // Status: three endpoints, hooks attached, programs in slots, conntrack and drops.
    let st = status(&topo);
    let eps = st["endpoints"].as_array().expect("endpoints");
    assert_eq!(eps.len(), 3, "{st}");
    for e in eps {
        for h in e["tc"].as_array().expect("tc") {
            assert_eq!(h["attached"], true, "{e}");
        }
        for d in ["ingress", "egress"] {
            assert!(e[d]["kernel"]["id"].as_u64().is_some_and(|id| id > 0), "{d} of {e}");
        }
    }
    assert!(st["conntrack"]["entries"].as_u64().is_some_and(|n| n >= 3), "{st}");
    assert!(st["drops"]["policy_deny"].as_u64().is_some_and(|n| n >= 4), "{st}");
    // Exactly the runtime's classifiers sit on each hook (TCX).
    let runtime_id = |name: &str| {
        st["runtime"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == name)
            .map(|p| p["id"].as_u64())
    };
    let (from_id, to_id) = (runtime_id("polc_from_ep"), runtime_id("polc_to_ep"));
    for p in &topo.pods {
        let (ing, eg) = tcx_programs(&topo, &p.ifname);
        assert_eq!(
            (Some(ing.first().map(|&i| u64::from(i))), ing.len()),
            (from_id, 1),
            "{}",
            p.ifname
        );
        assert_eq!((Some(eg.first().map(|&i| u64::from(i))), eg.len()), (to_id, 1), "{}", p.ifname);
    }

    // Dump: the allow rule of the server's ingress counted the client's flows.
    let dump = polc_ok(
        &topo.node,
        &[
            "dump",
            &server.ifname,
            "--hook",
            "ingress",
            "--pin-path",
            topo.pin(),
            "--output",
            "json",
        ],
    );
    let dump: serde_json::Value = serde_json::from_str(&dump).expect("dump json");
    let rules = dump[0]["rules"].as_array().expect("rules");
    let allow_tcp = rules
        .iter()
        .find(|r| {
            r["description"]
                .as_str()
                .is_some_and(|d| d.contains("server-ingress") && d.contains("rule 0"))
        })
        .unwrap_or_else(|| panic!("no rule 0 of server-ingress in {dump}"));
    assert!(allow_tcp["hits"].as_u64().is_some_and(|n| n >= 1), "{allow_tcp}");
    assert!(dump[0]["listing"].as_str().is_some_and(|l| l.contains("[hits: ")), "{dump}");

    // A long-lived connection under v1, then the swap to v2 while it keeps talking.
    let mut live = tcp_connect(client, server, 8080).expect("long-lived connection");
    assert!(exchange(&mut live, b"before"), "long-lived: before the swap");
    let v2 = write_cluster(&dir, &topo, POLICY_V2);
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let talker = thread::spawn(move || {
        let mut rounds = 0u32;
        while stop_rx.try_recv().is_err() {
            if !exchange(&mut live, b"during") {
                return Err(rounds);
            }
            rounds += 1;
            thread::sleep(Duration::from_millis(5));
        }
        Ok((rounds, live))
    });
    thread::sleep(Duration::from_millis(100));
    let report2 = attach(&topo, &v2);
    assert_eq!(report2["in_place"], false, "v2 changes programs: a new generation");
    thread::sleep(Duration::from_millis(100));
    let _ = stop_tx.send(());
    let (rounds, mut live) = match talker.join().expect("talker") {
        Ok(r) => r,
        Err(rounds) => {
            panic!("the long-lived connection broke during the swap after {rounds} rounds")
        }
    };
    assert!(rounds >= 5, "the connection exchanged data during the swap ({rounds} rounds)");
    assert!(exchange(&mut live, b"after"), "long-lived: after the swap");
    assert_eq!(report2["generation"], 2, "{report2}");
    assert_eq!(report2["runtime_loaded"], false);
    eprintln!("attach v2 (library time): {} us", report2["elapsed_us"]);

    // New verdicts hold for new connections.
    assert!(!tcp_ok(client, server, 8080), "v2: client -> server:8080 denied");
    assert!(tcp_ok(other, server, 8080), "v2: other -> server:8080 allowed");
    assert!(!udp_ok(client, server, 5353), "v2: udp from client denied");
    assert!(exchange(&mut live, b"still"), "long-lived: still up after new verdicts");
    let st2 = status(&topo);
    assert_eq!(st2["generation"], 2);
    // The old generation's slots were freed: v2 uses different ones and nothing leaks.
    let slots = |s: &serde_json::Value| -> Vec<u64> {
        let mut v: Vec<u64> = s["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|e| [e["ingress"]["slot"].as_u64(), e["egress"]["slot"].as_u64()])
            .flatten()
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let (s1, s2) = (slots(&st), slots(&st2));
    assert!(s1.iter().all(|s| !s2.contains(s)), "new slots {s2:?} vs old {s1:?}");
    drop(live);

    // Detach: no tc programs, no pins; traffic flows as before attach.
    let out = polc_ok(&topo.node, &["detach", "--pin-path", topo.pin(), "--output", "json"]);
    let det: serde_json::Value = serde_json::from_str(&out).expect("detach json");
    assert_eq!(det["hooks"].as_array().map(Vec::len), Some(6), "{det}");
    assert!(!topo.pin.exists(), "pin path {} still exists", topo.pin.display());
    for p in &topo.pods {
        assert_eq!(
            tcx_programs(&topo, &p.ifname),
            (vec![], vec![]),
            "{} still has tc programs",
            p.ifname
        );
    }
    assert!(tcp_ok(client, server, 9090), "after detach: no policy");
    let st_out = polc_in(&topo.node, &["status", "--pin-path", topo.pin()]);
    assert_eq!(st_out.status.code(), Some(0), "status after detach");
    assert!(String::from_utf8_lossy(&st_out.stdout).contains("nothing attached"));
    let st_out = polc_in(&topo.node, &["status", "--pin-path", topo.pin(), "--output", "json"]);
    let st: serde_json::Value = serde_json::from_slice(&st_out.stdout).expect("status json");
    assert_eq!(
        (st["attached"].as_bool(), st["endpoints"].as_array().map(Vec::len)),
        (Some(false), Some(0))
    );
    let det_out = polc_in(&topo.node, &["detach", "--pin-path", topo.pin()]);
    assert_eq!(det_out.status.code(), Some(0), "detaching nothing succeeds");
    eprintln!("netns end-to-end: {} ms", started.elapsed().as_millis());
}

/// A dual-stack pod gets one program per family and each family is enforced by its own;
/// a pod the cluster files know only by its IPv4 address has its IPv6 traffic dropped
/// (fail closed, counted as `no_family_policy`) instead of running the IPv4 program on it.
#[test]
fn dual_stack_pods_are_enforced_per_family_and_a_missing_family_fails_closed() {
    require_kernel!();
    if !netns_ready() {
        return;
    }
    let topo = Topology::dual_stack(&["client", "server", "other"]);
    let (client, server, other) = (topo.pod("client"), topo.pod("server"), topo.pod("other"));
    let v6 = |p: &Pod, port: u16| SocketAddr::from((p.addr6.expect("dual-stack pod"), port));
    for port in [8080, 9090] {
        tcp_echo_server(server, port);
        tcp_echo_server_at(server, v6(server, port));
    }
    // The topology carries both families before any policy.
    assert!(tcp_ok_to(client, v6(server, 9090)), "topology: IPv6 client -> server");
    assert!(tcp_ok_to(other, v6(server, 9090)), "topology: IPv6 other -> server");
    assert!(tcp_ok(other, server, 9090), "topology: IPv4");

    // client and server are dual-stack in the files; other is known by its IPv4 only.
    let policy = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: web
  namespace: e2e
spec:
  podSelector:
    matchLabels:
      app: server
  policyTypes: [Ingress]
  ingress:
  - from:
    - podSelector:
        matchExpressions:
        - {key: app, operator: In, values: [client, other]}
    ports:
    - {protocol: TCP, port: 8080}
"#;
    std::fs::create_dir_all(&topo.files).expect("mkdir");
    let file = topo.files.join("cluster.yaml");
    let yaml = format!("{}---{policy}", topo.pods_yaml_with_v6(&["client", "server"]));
    std::fs::write(&file, yaml).expect("write yaml");
    let report = attach(&topo, &file);
    let eps = report["endpoints"].as_array().expect("endpoints");
    let ep = |name: &str| {
        eps.iter().find(|e| e["name"] == format!("e2e/{name}")).expect("endpoint").clone()
    };
    let (srv, oth) = (ep("server"), ep("other"));
    assert!(srv["ingress_slot_v6"].is_u64() && srv["egress_slot_v6"].is_u64(), "{srv}");
    assert_ne!(srv["ingress_slot"], srv["ingress_slot_v6"], "one program per family");
    assert!(oth["ingress_slot"].is_u64() && oth["ingress_slot_v6"].is_null(), "{oth}");

    // Each family: the allowed port passes, the other is denied by the server's ingress.
    assert!(tcp_ok(client, server, 8080), "IPv4 client -> server:8080 allowed");
    assert!(tcp_ok_to(client, v6(server, 8080)), "IPv6 client -> server:8080 allowed");
    assert!(!tcp_ok(client, server, 9090), "IPv4 client -> server:9090 denied");
    assert!(!tcp_ok_to(client, v6(server, 9090)), "IPv6 client -> server:9090 denied");
    assert!(tcp_ok(other, server, 8080), "IPv4 other -> server:8080 allowed");
    // other has no IPv6 program: its IPv6 packets never reach any policy.
    let st = status(&topo);
    let before = st["drops"]["no_family_policy"].as_u64().expect("counter");
    assert!(!tcp_ok_to(other, v6(server, 8080)), "IPv6 from an IPv4-only pod is dropped");
    let after = status(&topo)["drops"]["no_family_policy"].as_u64().expect("counter");
    assert!(after > before, "counted: {before} -> {after}");
    let srv_status = status(&topo)["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .find(|e| e["name"] == "e2e/server")
        .expect("server status")
        .clone();
    assert!(srv_status["ingress_v6"]["kernel"]["id"].is_u64(), "{srv_status}");
}

/// Connects from `from`'s namespace with the source address `src` (bound before the
/// connect) to `to:port` and exchanges one message; true if the echo came back.
fn tcp_ok_from_addr(from: &Pod, src: Ipv4Addr, to: &Pod, port: u16) -> bool {
    let sockaddr = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(ip.octets()) },
        sin_zero: [0; 8],
    };
    let (local, remote) = (sockaddr(src, 0), sockaddr(to.addr, port));
    let len = std::mem::size_of::<libc::sockaddr_in>() as u32;
    let stream = in_netns(&from.ns, move || {
        // SAFETY: plain socket(2).
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        // SAFETY: a fresh fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // A blocking connect gives up after SO_SNDTIMEO.
        let tv = libc::timeval { tv_sec: 0, tv_usec: DENY_WAIT.as_micros() as libc::suseconds_t };
        // SAFETY: valid fd, option value and addresses of the given sizes.
        unsafe {
            let tv_len = std::mem::size_of::<libc::timeval>() as u32;
            let opt = (&tv as *const libc::timeval).cast();
            let r =
                libc::setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_SNDTIMEO, opt, tv_len);
            assert_eq!(r, 0, "SO_SNDTIMEO: {}", std::io::Error::last_os_error());
            let r = libc::bind(fd.as_raw_fd(), (&local as *const libc::sockaddr_in).cast(), len);
            assert_eq!(r, 0, "bind {src}: {}", std::io::Error::last_os_error());
            let r =
                libc::connect(fd.as_raw_fd(), (&remote as *const libc::sockaddr_in).cast(), len);
            (r == 0).then(|| TcpStream::from(fd))
        }
    });
    let Some(mut s) = stream else { return false };
    s.set_read_timeout(Some(ALLOW_WAIT)).is_ok()
        && s.set_write_timeout(Some(ALLOW_WAIT)).is_ok()
        && exchange(&mut s, b"hello")
}

/// Anti-spoofing in the runtime: a pod that sends from an address that is not its own
/// (a second address on its eth0) is dropped before policy, even where policy allows
/// everyone, and `status` counts it as `spoofed`; its real address connects.
#[test]
fn a_pod_sending_from_a_foreign_address_is_dropped_as_spoofed() {
    require_kernel!();
    if !netns_ready() {
        return;
    }
    let topo = Topology::new(&["client", "server"]);
    let (client, server) = (topo.pod("client"), topo.pod("server"));
    tcp_echo_server(server, 8080);
    // The client claims a second address; the node routes it back to the client, so
    // without polc the connection from it works (a drop below is polc's).
    let foreign = Ipv4Addr::new(10, 77, 0, 200);
    ip(&["-n", &client.ns, "addr", "add", &format!("{foreign}/32"), "dev", "eth0"]);
    ip(&["-n", &topo.node, "route", "add", &format!("{foreign}/32"), "dev", &client.ifname]);
    assert!(tcp_ok_from_addr(client, foreign, server, 8080), "topology: from {foreign}");

    let allow_all = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-all
  namespace: e2e
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
  ingress:
  - {}
  egress:
  - {}
"#;
    let file = write_cluster(&topo.files, &topo, allow_all);
    let report = attach(&topo, &file);
    let eps = report["endpoints"].as_array().expect("endpoints");
    let cl = eps.iter().find(|e| e["name"] == "e2e/client").expect("client endpoint");
    assert_eq!(cl["addresses"], serde_json::json!([client.addr.to_string()]), "{cl}");
    let spoofed = || status(&topo)["drops"]["spoofed"].as_u64().expect("spoofed counter");
    let before = spoofed();
    assert!(!tcp_ok_from_addr(client, foreign, server, 8080), "from {foreign}: spoofed");
    let after = spoofed();
    assert!(after > before, "counted as spoofed: {before} -> {after}");
    assert!(tcp_ok_from_addr(client, client.addr, server, 8080), "from the pod's own address");
    assert!(tcp_ok(client, server, 8080), "the default source is the pod's own address");
    assert_eq!(spoofed(), after, "the own address is never counted");
}

#[test]
fn a_rejected_program_leaves_the_previous_policy_in_place() {
    use polc_loader::dataplane::{self as dp, AttachOptions};
    require_kernel!();
    if !netns_ready() {
        return;
    }
    let topo = Topology::new(&["client", "server"]);
    let (client, server) = (topo.pod("client"), topo.pod("server"));
    tcp_echo_server(server, 8080);
    tcp_echo_server(server, 9090);
    let dir = topo.files.clone();
    let file = write_cluster(&dir, &topo, POLICY_V1);
    let compiled = polc::compile::compile_files(&[file]).expect("compile");
    let eps: Vec<(String, String)> =
        topo.pods.iter().map(|p| (format!("e2e/{}", p.name), p.ifname.clone())).collect();
    let good = polc::dataplane::desired(&compiled, &eps).expect("desired");
    let opts = AttachOptions {
        pin_path: topo.pin.clone(),
        runtime: polc_loader::RuntimeConfig { ct_max_entries: 4096, ..Default::default() },
        ..AttachOptions::default()
    };
    let node = topo.node.clone();
    let (g, o) = (good.clone(), opts.clone());
    let first = in_netns(&node, move || dp::attach(&g, &o)).expect("first attach");
    assert!(tcp_ok(client, server, 8080) && !tcp_ok(client, server, 9090), "v1 enforced");

    // Same policy, but one program reads r0 before writing it: the verifier refuses.
    let mut bad = good.clone();
    bad.programs[0].parts[0] = vec![0x95, 0, 0, 0, 0, 0, 0, 0]; // exit
    let (b, o) = (bad, opts.clone());
    let err = in_netns(&node, move || dp::attach(&b, &o)).expect_err("verifier must refuse");
    let msg = err.to_string();
    assert!(msg.contains("verifier log") && msg.contains("R0 !read_ok"), "{msg}");

    let pin = topo.pin.clone();
    let st = in_netns(&node, move || dp::status(&pin)).expect("status");
    assert_eq!(st.generation, first.generation, "the failed attach switched nothing");
    let slots_now: Vec<Option<u32>> =
        st.endpoints.iter().map(|e| e.ingress.as_ref().map(|p| p.slot)).collect();
    let slots_before: Vec<Option<u32>> = first.endpoints.iter().map(|e| e.ingress_slot).collect();
    assert_eq!(slots_now, slots_before);
    assert!(slots_now.iter().all(Option::is_some), "IPv4 pods have IPv4 programs");
    let loaded = |p: &Option<dp::PolicyStatus>| p.as_ref().is_some_and(|p| p.kernel.is_some());
    assert!(st.endpoints.iter().all(|e| loaded(&e.ingress) && loaded(&e.egress)));
    assert!(st.endpoints.iter().all(|e| e.ingress_v6.is_none() && e.egress_v6.is_none()));
    // Only the live generation is pinned: the failed one left nothing behind.
    let gens: Vec<String> = std::fs::read_dir(&topo.pin)
        .expect("pin dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('g'))
        .collect();
    assert_eq!(gens, vec![format!("g{}", first.generation)]);
    assert!(tcp_ok(client, server, 8080) && !tcp_ok(client, server, 9090), "v1 still enforced");

    // An unknown interface is refused before anything changes.
    let mut unknown = good.clone();
    unknown.endpoints[0].ifname = "polcnosuchif".into();
    let (u, o) = (unknown, opts.clone());
    let err = in_netns(&node, move || dp::attach(&u, &o)).expect_err("unknown interface");
    assert!(err.to_string().contains("polcnosuchif"), "{err}");

    // Leftovers of an attach that died before its switch are removed by the next attach.
    let stale = topo.pin.join("g99");
    std::fs::create_dir(&stale).expect("mkdir stale generation");
    let dummy = polc_loader::sys::map_create(&polc_loader::sys::MapSpec {
        kind: polc_loader::sys::MapKind::Array,
        name: "stale",
        key_size: 4,
        value_size: 4,
        max_entries: 1,
    })
    .expect("map");
    bpffs::pin(std::os::fd::AsFd::as_fd(&dummy), &stale.join("rule_hits")).expect("pin");

    // Concurrent attaches serialise on the pin-path lock: both succeed, generations 2 and 3.
    // (Distinct labels make each a new generation rather than an in-place update.)
    let mut handles = Vec::new();
    for k in 0..2 {
        let mut g = good.clone();
        g.programs[0].label.push_str(&format!(" (variant {k})"));
        let (o, n) = (opts.clone(), node.clone());
        handles.push(thread::spawn(move || in_netns(&n, move || dp::attach(&g, &o))));
    }
    let mut gens: Vec<u64> = handles
        .into_iter()
        .map(|h| h.join().expect("join").expect("concurrent attach").generation)
        .collect();
    gens.sort();
    assert_eq!(gens, vec![2, 3]);
    assert!(!stale.exists(), "the stale generation was removed");
    assert!(tcp_ok(client, server, 8080) && !tcp_ok(client, server, 9090), "still enforced");

    let pin = topo.pin.clone();
    in_netns(&node, move || dp::detach(&pin)).expect("detach");
    assert!(!topo.pin.exists());
}

#[test]
fn legacy_clsact_filters_enforce_and_detach_cleanly() {
    require_kernel!();
    if !netns_ready() {
        return;
    }
    let topo = Topology::new(&["client", "server", "other"]);
    let (client, server, other) = (topo.pod("client"), topo.pod("server"), topo.pod("other"));
    tcp_echo_server(server, 8080);
    let dir = topo.files.clone();
    let file = write_cluster(&dir, &topo, POLICY_V1);
    // Bad input is exit 2 with one line naming the problem, and changes nothing.
    let f = file.display().to_string();
    let out = polc_in(
        &topo.node,
        &["attach", "-f", &f, "--pin-path", topo.pin(), "--endpoint", "e2e/client=polcnoif"],
    );
    assert_eq!(out.status.code(), Some(2), "unknown interface");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no interface named `polcnoif`") && err.lines().count() == 1, "{err}");
    let out = polc_in(
        &topo.node,
        &["attach", "-f", &f, "--pin-path", topo.pin(), "--endpoint", "e2e/ghost=lo"],
    );
    assert_eq!(out.status.code(), Some(2), "unknown pod");
    assert!(String::from_utf8_lossy(&out.stderr).contains("e2e/ghost"));
    assert!(!topo.pin.exists(), "a refused attach creates nothing");
    let out = polc_in(&topo.node, &["status", "--pin-path", topo.pin()]);
    assert_eq!(out.status.code(), Some(0), "nothing attached yet is a state");
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing attached"));

    // Someone else's clsact qdisc on other's interface: polc uses it and must leave it.
    run("tc", &["-n", &topo.node, "qdisc", "add", "dev", &other.ifname, "clsact"]);
    let mut args = vec![
        "attach".to_string(),
        "-f".into(),
        file.display().to_string(),
        "--pin-path".into(),
        topo.pin().into(),
        "--tc-mode".into(),
        "legacy".into(),
        "--ct-entries".into(),
        "4096".into(),
    ];
    args.extend(topo.endpoint_args());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let text = polc_ok(&topo.node, &args);
    // Programs embed no address (the runtime checks it), so the three pods share one egress
    // program (none has an egress policy) and have three distinct ingress programs.
    assert!(text.starts_with("generation 1: 4 programs loaded, 3 endpoints"), "{text}");

    let filters = |ifname: &str, hook: &str| {
        let out = run("tc", &["-n", &topo.node, "filter", "show", "dev", ifname, hook]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(filters(&server.ifname, "ingress").contains("polc_from_ep"));
    assert!(filters(&server.ifname, "egress").contains("polc_to_ep"));
    assert_eq!(
        tcx_programs(&topo, &server.ifname),
        (vec![], vec![]),
        "no TCX links in legacy mode"
    );
    assert!(tcp_ok(client, server, 8080), "legacy: client -> server:8080 allowed");
    assert!(!tcp_ok(other, server, 8080), "legacy: other -> server:8080 denied");

    let st = polc_ok(&topo.node, &["status", "--pin-path", topo.pin()]);
    assert!(st.contains("tc: ingress legacy, egress legacy"), "{st}");
    assert!(st.contains("policy_deny="), "{st}");
    let dump = polc_ok(&topo.node, &["dump", &server.ifname, "--pin-path", topo.pin()]);
    eprintln!("{st}\n{dump}");
    assert!(dump.contains("; ingress policy of e2e/server"), "{dump}");
    assert!(dump.contains("; egress policy of e2e/server"), "{dump}");

    polc_ok(&topo.node, &["detach", "--pin-path", topo.pin()]);
    for p in &topo.pods {
        for hook in ["ingress", "egress"] {
            assert_eq!(filters(&p.ifname, hook).trim(), "", "{} {hook} filters left", p.ifname);
        }
    }
    let qdiscs = |ifname: &str| {
        let out = run("tc", &["-n", &topo.node, "qdisc", "show", "dev", ifname]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // The clsact qdiscs polc added are gone; the one that was there before (other's) stays.
    assert!(!qdiscs(&server.ifname).contains("clsact"), "{}", qdiscs(&server.ifname));
    assert!(!qdiscs(&client.ifname).contains("clsact"), "{}", qdiscs(&client.ifname));
    assert!(qdiscs(&other.ifname).contains("clsact"), "a qdisc polc did not add is kept");
    assert!(!topo.pin.exists());
    assert!(tcp_ok(other, server, 8080), "after detach: no policy");
}

/// Kills the agent process this test started when dropped (also on panic).
struct AgentGuard(std::process::Child);

impl Drop for AgentGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `polc status` until the live generation is `want` (at most 15 s).
fn wait_for_generation(topo: &Topology, want: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let out = polc_in(&topo.node, &["status", "--pin-path", topo.pin(), "--output", "json"]);
        if out.status.success() {
            let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            if st["generation"].as_u64() == Some(want) {
                return true;
            }
        }
        thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn the_agent_reconciles_when_the_files_change() {
    require_kernel!();
    if !netns_ready() {
        return;
    }
    let topo = Topology::new(&["client", "server", "other"]);
    let (client, server, other) = (topo.pod("client"), topo.pod("server"), topo.pod("other"));
    tcp_echo_server(server, 8080);
    let dir = topo.files.clone();
    let file = write_cluster(&dir, &topo, POLICY_V1);

    let ns = File::open(format!("/run/netns/{}", topo.node)).expect("node netns");
    let ns_fd = ns.as_raw_fd();
    let mut cmd = Command::new(POLC);
    cmd.args(["agent", "-f", dir.to_str().expect("utf-8"), "--pin-path", topo.pin()]);
    cmd.args(["--interval-ms", "100", "--debounce-ms", "100"]);
    cmd.args(topo.endpoint_args());
    cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    // SAFETY: setns is async-signal-safe; the fd is open until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(ns_fd, libc::CLONE_NEWNET) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let agent = AgentGuard(cmd.spawn().expect("spawn agent"));
    drop(ns);

    assert!(wait_for_generation(&topo, 1), "the agent attached v1");
    assert!(tcp_ok(client, server, 8080) && !tcp_ok(other, server, 8080), "v1 enforced");

    // A broken file is not applied; v1 stays.
    std::fs::write(&file, "kind: [unterminated").expect("write");
    thread::sleep(Duration::from_millis(600));
    assert!(wait_for_generation(&topo, 1), "still v1");
    assert!(tcp_ok(client, server, 8080), "v1 still enforced after a bad edit");

    write_cluster(&dir, &topo, POLICY_V2);
    assert!(wait_for_generation(&topo, 2), "the agent attached v2");
    assert!(!tcp_ok(client, server, 8080) && tcp_ok(other, server, 8080), "v2 enforced");

    drop(agent);
    polc_ok(&topo.node, &["detach", "--pin-path", topo.pin()]);
    assert!(!topo.pin.exists());
}

/// Attach timing with 32 endpoints, each with its own ingress program (plus a shared
/// egress one). A measurement, not a check:
/// `cargo test -p polc --test netns_e2e attach_time -- --ignored --nocapture`.
#[test]
#[ignore]
fn attach_time_with_32_endpoints() {
    require_kernel!();
    if !netns_ready() {
        return;
    }
    const NAMES: [&str; 32] = [
        "p0", "p1", "p2", "p3", "p4", "p5", "p6", "p7", "p8", "p9", "p10", "p11", "p12", "p13",
        "p14", "p15", "p16", "p17", "p18", "p19", "p20", "p21", "p22", "p23", "p24", "p25", "p26",
        "p27", "p28", "p29", "p30", "p31",
    ];
    let topo = Topology::new(&NAMES);
    let policy = |port: u16| {
        NAMES
            .iter()
            .enumerate()
            .map(|(i, n)| {
                format!(
                    "\napiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata:\n  \
                     name: in-{n}\n  namespace: e2e\nspec:\n  selector: app == '{n}'\n  \
                     types: [Ingress]\n  ingress:\n  - action: Allow\n    protocol: TCP\n    \
                     source:\n      selector: app == '{}'\n    destination:\n      ports: [{port}]\n",
                    NAMES[(i + 1) % NAMES.len()]
                )
            })
            .collect::<Vec<_>>()
            .join("---\n")
    };
    let dir = topo.files.clone();
    let v1 = write_cluster(&dir, &topo, &policy(80));
    let r1 = attach(&topo, &v1);
    let v2 = write_cluster(&dir, &topo, &policy(81));
    let r2 = attach(&topo, &v2);
    eprintln!(
        "32 endpoints, {} programs: first attach {} us, update {} us (library time)",
        r1["programs_loaded"], r1["elapsed_us"], r2["elapsed_us"]
    );
    assert_eq!((r1["generation"].as_u64(), r2["generation"].as_u64()), (Some(1), Some(2)));
}

// ------------------------------------------------------------------ service NAT

/// A TCP server in `pod` that sends the pod's name and then echoes, so a client behind a
/// cluster IP can tell which backend it reached.
fn tcp_named_server(pod: &Pod, port: u16) {
    let addr = SocketAddr::from((pod.addr, port));
    let name = pod.name;
    let listener = in_netns(&pod.ns, move || TcpListener::bind(addr).expect("bind"));
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || {
                let mut s = stream;
                let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                if s.write_all(format!("{name}\n").as_bytes()).is_err() {
                    return;
                }
                let mut buf = [0u8; 512];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
}

/// Connects from `from` to `addr` and reads the backend's name line; `None` if the
/// connection or the read fails.
fn backend_via(from: &Pod, addr: SocketAddr) -> Option<(String, TcpStream)> {
    let mut s = tcp_connect_to(from, addr)?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 32 {
        s.read_exact(&mut byte).ok()?;
        if byte[0] == b'\n' {
            return Some((String::from_utf8_lossy(&line).into_owned(), s));
        }
        line.push(byte[0]);
    }
    None
}

/// The policies of both service tests: the web pods accept TCP 8080 and UDP 5353 from the
/// client only; the client may only send to the web pods' 8080/5353, so its egress policy
/// must see the backend, not the service.
const WEB_POLICIES: &str = r#"---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: web-ingress, namespace: e2e}
spec:
  selector: app in {'web1', 'web2'}
  types: [Ingress]
  ingress:
  - action: Allow
    protocol: TCP
    source: {selector: app == 'client'}
    destination: {ports: [8080]}
  - action: Allow
    protocol: UDP
    source: {selector: app == 'client'}
    destination: {ports: [5353]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-egress, namespace: e2e}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - to:
    - podSelector: {matchExpressions: [{key: app, operator: In, values: [web1, web2]}]}
    ports: [{port: 8080}, {port: 5353, protocol: UDP}]
"#;

/// `web` (10.96.0.10:80 -> 8080 on web1 and web2, from an EndpointSlice), `dns`
/// (10.96.0.53:53/UDP -> web1:5353) and `sticky` (10.96.0.20:80, ClientIP affinity); the
/// web pods accept TCP 8080 and UDP 5353 from the client only; the client may only send to
/// the web pods' 8080/5353, so its egress policy must see the backend, not the service.
fn service_cluster(topo: &Topology, web_backends: &[&str]) -> String {
    let slice_eps: String = web_backends
        .iter()
        .map(|n| format!("- addresses: [{}]\n  conditions: {{ready: true}}\n", topo.pod(n).addr))
        .collect();
    let web1 = topo.pod("web1").addr;
    let web2 = topo.pod("web2").addr;
    format!(
        r#"{pods}{WEB_POLICIES}---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: e2e}}
spec:
  type: ClusterIP
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10]
  ports: [{{name: http, port: 80, protocol: TCP, targetPort: 8080}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-x1
  namespace: e2e
  labels: {{kubernetes.io/service-name: web}}
addressType: IPv4
endpoints:
{slice_eps}ports: [{{name: http, port: 8080, protocol: TCP}}]
---
apiVersion: v1
kind: Service
metadata: {{name: dns, namespace: e2e}}
spec:
  clusterIP: 10.96.0.53
  ports: [{{name: dns, port: 53, protocol: UDP, targetPort: 5353}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: dns-x1
  namespace: e2e
  labels: {{kubernetes.io/service-name: dns}}
addressType: IPv4
endpoints:
- addresses: [{web1}]
ports: [{{name: dns, port: 5353, protocol: UDP}}]
---
apiVersion: v1
kind: Service
metadata: {{name: sticky, namespace: e2e}}
spec:
  clusterIP: 10.96.0.20
  sessionAffinity: ClientIP
  ports: [{{port: 80, targetPort: 8080}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: sticky-x1
  namespace: e2e
  labels: {{kubernetes.io/service-name: sticky}}
addressType: IPv4
endpoints:
- addresses: [{web1}]
- addresses: [{web2}]
ports: [{{port: 8080}}]
"#,
        pods = topo.pods_yaml()
    )
}

#[test]
fn a_service_cluster_ip_reaches_its_backends_through_nat() {
    require_kernel!();
    if !netns_ready() {
        return;
    }
    let topo = Topology::new(&["client", "web1", "web2", "other"]);
    let (client, web1, other) = (topo.pod("client"), topo.pod("web1"), topo.pod("other"));
    tcp_named_server(web1, 8080);
    tcp_named_server(topo.pod("web2"), 8080);
    udp_echo_server(web1, 5353);
    let web: SocketAddr = "10.96.0.10:80".parse().unwrap();
    let sticky: SocketAddr = "10.96.0.20:80".parse().unwrap();
    assert!(backend_via(client, web).is_none(), "topology: nothing answers 10.96.0.10 yet");

    let dir = topo.files.clone();
    std::fs::create_dir_all(&dir).expect("mkdir");
    let file = dir.join("cluster.yaml");
    std::fs::write(&file, service_cluster(&topo, &["web1", "web2"])).expect("write");
    let report = attach(&topo, &file);
    assert_eq!(report["services"], 3, "{report}");
    assert_eq!(report["services_changed"], 3, "{report}");

    // Both backends serve the cluster IP; the client's egress policy allowed web:8080, so
    // it saw the backend (a policy seeing 10.96.0.10:80 would have denied).
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..24 {
        let (name, mut s) = backend_via(client, web).expect("client -> web:80 through NAT");
        assert!(exchange(&mut s, b"ping"), "echo through NAT from {name}");
        seen.insert(name);
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["web1", "web2"], "both backends used");
    // The backends' ingress policy sees the real client: `other` is denied.
    assert!(backend_via(other, web).is_none(), "other -> web:80 denied by web ingress policy");
    // UDP: the reply's source is rewritten back to the service, or the socket would drop it.
    let sock = in_netns(&client.ns, || UdpSocket::bind("0.0.0.0:0").expect("udp bind"));
    sock.set_read_timeout(Some(ALLOW_WAIT)).unwrap();
    sock.connect("10.96.0.53:53").unwrap();
    sock.send(b"query").unwrap();
    let mut buf = [0u8; 16];
    let n = sock.recv(&mut buf).expect("UDP reply from the service address");
    assert_eq!(&buf[..n], b"query");
    // ClientIP affinity: one client keeps one backend.
    let first = backend_via(client, sticky).expect("sticky").0;
    for _ in 0..8 {
        assert_eq!(backend_via(client, sticky).expect("sticky").0, first, "affinity kept");
    }

    let st = status(&topo);
    let services = st["services"].as_array().expect("services in status");
    assert_eq!(services.len(), 3, "{st}");
    assert!(
        services
            .iter()
            .any(|s| s["name"] == "service e2e/web 10.96.0.10:80/TCP" && s["backends"] == 2),
        "{st}"
    );

    // A connection to web2 stays up while web2 leaves the service; new ones go to web1.
    let mut kept = loop {
        let (name, s) = backend_via(client, web).expect("connect");
        if name == "web2" {
            break s;
        }
    };
    std::fs::write(&file, service_cluster(&topo, &["web1"])).expect("write");
    let report = attach(&topo, &file);
    assert_eq!(report["services_changed"], 1, "only web changed: {report}");
    assert!(exchange(&mut kept, b"still there"), "established NAT flow survives the change");
    for _ in 0..8 {
        assert_eq!(backend_via(client, web).expect("web1").0, "web1");
    }
    let st = status(&topo);
    let sticky_after = st["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"].as_str().is_some_and(|n| n.contains("sticky")));
    assert_eq!(sticky_after.map(|s| s["backends"].clone()), Some(2.into()), "{st}");

    polc_ok(&topo.node, &["detach", "--pin-path", topo.pin()]);
    assert!(!topo.pin.exists(), "detach removes every pin, NAT maps included");
    assert!(backend_via(client, web).is_none(), "no NAT after detach");
}

/// [`tcp_named_server`] on any of the pod's addresses (e.g. its IPv6 one).
fn tcp_named_server_at(pod: &Pod, addr: SocketAddr) {
    let name = pod.name;
    let listener = in_netns(&pod.ns, move || TcpListener::bind(addr).expect("bind"));
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || {
                let mut s = stream;
                let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                if s.write_all(format!("{name}\n").as_bytes()).is_err() {
                    return;
                }
                let mut buf = [0u8; 512];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
}

/// A dual-stack Service: `web` on 10.96.0.10 and fd96::10, TCP 80 -> 8080 and UDP 53 ->
/// 5353 on web1 and web2, one EndpointSlice per family. The client may only send to the
/// web pods' 8080/5353 (so its egress policy must see the backend); the web pods accept
/// those ports from the client only.
fn dual_stack_service_cluster(topo: &Topology) -> String {
    let (web1, web2) = (topo.pod("web1"), topo.pod("web2"));
    let a6 = |p: &Pod| p.addr6.expect("dual-stack pod");
    format!(
        r#"{pods}{WEB_POLICIES}---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: e2e}}
spec:
  type: ClusterIP
  ipFamilyPolicy: RequireDualStack
  ipFamilies: [IPv4, IPv6]
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10, fd96::10]
  ports:
  - {{name: http, port: 80, protocol: TCP, targetPort: 8080}}
  - {{name: dns, port: 53, protocol: UDP, targetPort: 5353}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-v4
  namespace: e2e
  labels: {{kubernetes.io/service-name: web}}
addressType: IPv4
endpoints:
- addresses: [{w1}]
- addresses: [{w2}]
ports: [{{name: http, port: 8080, protocol: TCP}}, {{name: dns, port: 5353, protocol: UDP}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-v6
  namespace: e2e
  labels: {{kubernetes.io/service-name: web}}
addressType: IPv6
endpoints:
- addresses: ['{w1_6}']
- addresses: ['{w2_6}']
ports: [{{name: http, port: 8080, protocol: TCP}}, {{name: dns, port: 5353, protocol: UDP}}]
"#,
        pods = topo.pods_yaml_with_v6(&["client", "web1", "web2"]),
        w1 = web1.addr,
        w2 = web2.addr,
        w1_6 = a6(web1),
        w2_6 = a6(web2),
    )
}

#[test]
fn a_dual_stack_service_reaches_its_backends_through_ipv6_nat() {
    require_kernel!();
    if !netns_ready() {
        return;
    }
    let topo = Topology::dual_stack(&["client", "web1", "web2"]);
    let client = topo.pod("client");
    for name in ["web1", "web2"] {
        let pod = topo.pod(name);
        tcp_named_server(pod, 8080);
        tcp_named_server_at(pod, SocketAddr::from((pod.addr6.expect("v6"), 8080)));
        let a6 = SocketAddr::from((pod.addr6.expect("v6"), 5353));
        let sock = in_netns(&pod.ns, move || UdpSocket::bind(a6).expect("bind udp6"));
        thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(&buf[..n], from);
            }
        });
    }
    let web6: SocketAddr = "[fd96::10]:80".parse().unwrap();
    let web4: SocketAddr = "10.96.0.10:80".parse().unwrap();
    assert!(backend_via(client, web6).is_none(), "topology: nothing answers fd96::10 yet");

    std::fs::create_dir_all(&topo.files).expect("mkdir");
    let file = topo.files.join("cluster.yaml");
    std::fs::write(&file, dual_stack_service_cluster(&topo)).expect("write");
    let report = attach(&topo, &file);
    assert_eq!(report["services"], 4, "2 cluster IPs x 2 ports: {report}");

    // Real TCP over the IPv6 cluster IP reaches both backends (the client's egress policy
    // allowed only the web pods' 8080, so it saw the backend), and the echo works: every
    // reply came back from [fd96::10]:80, or the client's TCP would have reset it.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..24 {
        let (name, mut s) = backend_via(client, web6).expect("client -> [fd96::10]:80");
        assert_eq!(s.peer_addr().expect("peer"), web6);
        assert!(exchange(&mut s, b"ping over v6"), "echo through IPv6 NAT from {name}");
        seen.insert(name);
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["web1", "web2"], "both backends used");
    // The IPv4 cluster IP of the same service still works.
    let (_, mut s) = backend_via(client, web4).expect("client -> 10.96.0.10:80");
    assert!(exchange(&mut s, b"ping over v4"));

    // UDP: a connected socket only accepts the reply from the service address.
    let sock = in_netns(&client.ns, || UdpSocket::bind("[::]:0").expect("udp6 bind"));
    sock.set_read_timeout(Some(ALLOW_WAIT)).unwrap();
    sock.connect("[fd96::10]:53").unwrap();
    for i in 0..4u8 {
        let msg = [b'q', i];
        sock.send(&msg).unwrap();
        let mut buf = [0u8; 16];
        let n = sock.recv(&mut buf).expect("UDP reply from [fd96::10]:53");
        assert_eq!(&buf[..n], &msg);
    }

    let st = status(&topo);
    let services = st["services"].as_array().expect("services in status");
    assert!(
        services
            .iter()
            .any(|s| s["name"] == "service e2e/web [fd96::10]:80/TCP" && s["backends"] == 2),
        "{st}"
    );
    // No failed rewrite, no frontend without backends (other drops, e.g. of the pods' own
    // multicast listener reports by the client's egress policy, are not this test's).
    for reason in ["truncated", "no_backend", "spoofed"] {
        assert_eq!(st["drops"][reason], 0, "{reason}: {st}");
    }
}

// ------------------------------------------------------------------ pod churn in place

/// The server accepts TCP 8080 from the client and from pods labelled `role: trusted`.
const TRUSTED_POLICY: &str = r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: server-ingress, namespace: e2e}
spec:
  selector: app == 'server'
  types: [Ingress]
  ingress:
  - action: Allow
    protocol: TCP
    source: {selector: app == 'client' || role == 'trusted'}
    destination: {ports: [8080]}
"#;

/// `other` is a pod elsewhere (in the YAML, not an endpoint here). Labelling it trusted
/// changes IP-set contents only: attach updates the live maps in place, loads nothing,
/// keeps the generation and the program ids, and the new verdict holds at once.
#[test]
fn relabelling_a_pod_elsewhere_updates_maps_in_place() {
    require_kernel!();
    if !netns_ready() {
        return;
    }
    let topo = Topology::new(&["client", "server", "other"]);
    let (client, server, other) = (topo.pod("client"), topo.pod("server"), topo.pod("other"));
    tcp_echo_server(server, 8080);
    let dir = topo.files.clone();
    std::fs::create_dir_all(&dir).expect("mkdir");
    let file = dir.join("cluster.yaml");
    let write = |trusted: bool| {
        let mut pods = topo.pods_yaml();
        if trusted {
            pods = pods.replace("    app: other\n", "    app: other\n    role: trusted\n");
        }
        std::fs::write(&file, format!("{pods}---{TRUSTED_POLICY}")).expect("write");
    };
    let attach_two = || {
        let f = file.display().to_string();
        let eps =
            [format!("e2e/client={}", client.ifname), format!("e2e/server={}", server.ifname)];
        let out = polc_ok(
            &topo.node,
            &[
                "attach",
                "-f",
                &f,
                "--pin-path",
                topo.pin(),
                "--output",
                "json",
                "--endpoint",
                &eps[0],
                "--endpoint",
                &eps[1],
            ],
        );
        serde_json::from_str::<serde_json::Value>(&out).expect("attach json")
    };
    // (live, spare) kernel program ids per endpoint and direction: programs with -O2
    // tables are loaded once per copy of their tables, and an update switches copies.
    let program_ids = || {
        let st = status(&topo);
        let mut ids: Vec<(u64, Option<u64>)> = Vec::new();
        for e in st["endpoints"].as_array().expect("endpoints") {
            for d in ["ingress", "egress"] {
                let live = e[d]["kernel"]["id"].as_u64().expect("live program");
                ids.push((live, e[d]["spare"]["id"].as_u64()));
            }
        }
        ids
    };
    let loaded = |ids: &[(u64, Option<u64>)]| -> BTreeSet<u64> {
        ids.iter().flat_map(|&(live, spare)| std::iter::once(live).chain(spare)).collect()
    };

    write(false);
    let r1 = attach_two();
    assert_eq!(r1["in_place"], false);
    assert!(tcp_ok(client, server, 8080), "client allowed");
    assert!(!tcp_ok(other, server, 8080), "other is not trusted yet");
    let mut live = tcp_connect(client, server, 8080).expect("long-lived connection");
    assert!(exchange(&mut live, b"before"));
    let ids = program_ids();
    assert_eq!(ids.len(), 4, "two endpoints, two directions");

    write(true);
    let r2 = attach_two();
    assert_eq!(r2["in_place"], true, "{r2}");
    assert_eq!(r2["generation"], r1["generation"], "{r2}");
    assert_eq!(r2["programs_loaded"], 0, "{r2}");
    assert!(r2["map_entries_changed"].as_u64().is_some_and(|n| n >= 1), "{r2}");
    let ids2 = program_ids();
    assert_eq!(loaded(&ids2), loaded(&ids), "the same loaded programs enforce");
    // The server's ingress (-O2 class tables, changed) moved to its spare copy of the
    // tables in one step; the previous copy stays loaded, holding the previous tables.
    let switched: Vec<bool> = ids.iter().zip(&ids2).map(|(a, b)| a.0 != b.0).collect();
    assert!(switched.iter().any(|&s| s), "no program switched copies: {ids:?} -> {ids2:?}");
    for ((live, spare), (live2, spare2)) in ids.iter().zip(&ids2) {
        if live != live2 {
            assert_eq!((Some(*live2), Some(*live)), (*spare, *spare2), "copies swapped");
        }
    }
    assert!(tcp_ok(other, server, 8080), "other is trusted now");
    assert!(exchange(&mut live, b"after"), "the live connection never noticed");

    // And back: the entry goes away again, still in place.
    write(false);
    let r3 = attach_two();
    assert_eq!(r3["in_place"], true, "{r3}");
    assert!(!tcp_ok(other, server, 8080), "other is not trusted any more");
    // Back on the first copy, whose tables already said so: switched, nothing written.
    assert_eq!(program_ids(), ids, "{r3}");
    // Nothing changed at all: in place with no entries to touch.
    let r4 = attach_two();
    assert_eq!(
        (r4["in_place"].clone(), r4["map_entries_changed"].clone()),
        (true.into(), 0.into())
    );
}

/// A policy with more port classes than a branch tree holds (-O2 finds them in the
/// program's port array): moving its one allowed service port from 8080 to 8081 leaves
/// the code as it was, so attach updates in place, and the port array is policy too.
#[test]
fn a_port_change_in_a_port_array_program_updates_it_in_place() {
    require_kernel!();
    if !netns_ready() {
        return;
    }
    let topo = Topology::new(&["client", "server"]);
    let (client, server) = (topo.pod("client"), topo.pod("server"));
    tcp_echo_server(server, 8080);
    let dir = topo.files.clone();
    std::fs::create_dir_all(&dir).expect("mkdir");
    let file = dir.join("cluster.yaml");
    // 1,200 spaced ports: 2,400 port classes for TCP alone.
    let many: Vec<String> = (0..1200).map(|i| (20000 + 2 * i).to_string()).collect();
    let write = |port: u16| {
        let policy = format!(
            "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\n\
             metadata: {{name: server-ingress, namespace: e2e}}\nspec:\n  \
             selector: app == 'server'\n  types: [Ingress]\n  ingress:\n  - action: Allow\n    \
             protocol: TCP\n    source: {{selector: app == 'client'}}\n    \
             destination: {{ports: [{port}, {}]}}\n",
            many.join(", ")
        );
        std::fs::write(&file, format!("{}---\n{policy}", topo.pods_yaml())).expect("write");
    };
    let attach = || {
        let f = file.display().to_string();
        let eps =
            [format!("e2e/client={}", client.ifname), format!("e2e/server={}", server.ifname)];
        let args = ["attach", "-f", &f, "--pin-path", topo.pin(), "--output", "json"];
        let mut args: Vec<&str> = args.to_vec();
        args.extend(["--endpoint", &eps[0], "--endpoint", &eps[1]]);
        serde_json::from_str::<serde_json::Value>(&polc_ok(&topo.node, &args)).expect("json")
    };
    write(8080);
    let r1 = attach();
    assert!(tcp_ok(client, server, 8080), "8080 allowed: {r1}");
    write(8081);
    let r2 = attach();
    assert_eq!(r2["in_place"], true, "same code, new port array: {r2}");
    assert!(r2["map_entries_changed"].as_u64().is_some_and(|n| n >= 1), "{r2}");
    assert!(!tcp_ok(client, server, 8080), "8080 is not allowed any more: {r2}");
}
