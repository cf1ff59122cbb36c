#!/usr/bin/env python3
"""Independent oracle: random Kubernetes clusters (seeded), verdicts from network-config-analyzer
(nca, PyPI) against `polc explain` on the ir, vm and kernel engines.

    scripts/oracle/oracle.py --polc PATH [--seeds 1-20] [--engines ir,vm,kernel] [--quick]
                             [--keep DIR]

Generated within what nca models the same way polc does: Kubernetes NetworkPolicy only (no
Calico tiers, no service accounts), pod and namespace selectors (matchLabels and
matchExpressions), numeric and named ports, endPort ranges, TCP/UDP/SCTP, ipBlocks with except
that never contain a pod IP (nca does not treat pod IPs as inside an ipBlock), policyTypes.
External addresses are probed only outside the pod network, and for every ordered pair of
pods and a set of (protocol, port) probes, nca's connection set must contain the probe exactly
when polc says allow. Exit 0 when every verdict agrees, 1 on a disagreement (each one printed
with the seed, the flow and both answers; --keep keeps the cluster files), 2 on a usage or
tool error.
"""

import argparse
import ipaddress
import json
import os
import random
import re
import subprocess
import sys
import tempfile

NAMESPACES = ["shop", "ops", "data"]
LABEL_KEYS = ["app", "tier", "env"]
LABEL_VALUES = ["web", "db", "prod", "cache"]
NAMED_PORTS = ["http", "metrics", "dns"]
PORTS = [53, 80, 443, 5432, 8080, 9090]
POD_NET = "10.1.2."
# ipBlocks: outside the pod network, overlapping each other.
CIDRS = ["192.168.0.0/16", "192.168.1.0/24", "172.16.0.0/12", "172.16.5.0/24", "0.0.0.0/1"]
EXTERNAL = ["192.168.1.7", "192.168.200.1", "172.16.5.5", "172.20.0.1", "8.8.8.8", "203.0.113.9"]
PROTOCOLS = ["tcp", "udp", "sctp"]


def labels(r, at_least_one=False):
    out = {}
    for key in LABEL_KEYS:
        if r.random() < 0.5:
            out[key] = r.choice(LABEL_VALUES)
    if at_least_one and not out:
        out[r.choice(LABEL_KEYS)] = r.choice(LABEL_VALUES)
    return out


def label_selector(r):
    sel = {}
    if r.random() < 0.7:
        sel["matchLabels"] = labels(r)
    if r.random() < 0.3:
        op = r.choice(["In", "NotIn", "Exists", "DoesNotExist"])
        expr = {"key": r.choice(LABEL_KEYS), "operator": op}
        if op in ("In", "NotIn"):
            expr["values"] = r.sample(LABEL_VALUES, r.randint(1, 2))
        sel["matchExpressions"] = [expr]
    return sel


def peer(r):
    kind = r.randrange(5)
    if kind == 0:
        return {"podSelector": label_selector(r)}
    if kind == 1:
        return {"namespaceSelector": {"matchLabels": {"team": r.choice(NAMESPACES)}}}
    if kind == 2:
        return {"namespaceSelector": label_selector(r) if r.random() < 0.3 else {},
                "podSelector": label_selector(r)}
    cidr = r.choice(CIDRS)
    block = {"cidr": cidr}
    net = ipaddress.ip_network(cidr)
    inner = [c for c in CIDRS if c != cidr and ipaddress.ip_network(c).subnet_of(net)]
    if inner and r.random() < 0.5:
        block["except"] = [r.choice(inner)]
    return {"ipBlock": block}


def ports(r):
    out = []
    for _ in range(r.randint(1, 2)):
        p = {}
        if r.random() < 0.8:
            p["protocol"] = r.choice(["TCP", "UDP", "SCTP"])
        choice = r.random()
        if choice < 0.25:
            p["port"] = r.choice(NAMED_PORTS)
        elif choice < 0.45:
            start = r.choice(PORTS)
            p["port"] = start
            p["endPort"] = start + r.choice([0, 10, 1000])
        elif choice < 0.95:
            p["port"] = r.choice(PORTS)
        out.append(p)
    return out


def rule(r, peers_key):
    out = {}
    if r.random() < 0.75:
        out[peers_key] = [peer(r) for _ in range(r.randint(1, 2))]
    if r.random() < 0.6:
        out["ports"] = ports(r)
    return out


def policy(r, n):
    types = r.choice([["Ingress"], ["Egress"], ["Ingress", "Egress"]])
    spec = {"podSelector": label_selector(r) if r.random() < 0.8 else {}, "policyTypes": types}
    if "Ingress" in types:
        spec["ingress"] = [rule(r, "from") for _ in range(r.randint(0, 3))]
    if "Egress" in types:
        spec["egress"] = [rule(r, "to") for _ in range(r.randint(0, 3))]
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": f"np{n}", "namespace": r.choice(NAMESPACES)}, "spec": spec}


def cluster(seed):
    """Objects of one random cluster, and its pods as (namespace/name, ip)."""
    r = random.Random(seed)
    objects = [{"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": ns, "labels": {"team": ns, **labels(r)}}}
               for ns in NAMESPACES]
    pods = []
    for i in range(r.randint(3, 6)):
        ns = r.choice(NAMESPACES)
        ip = f"{POD_NET}{10 + i}"
        named = [{"name": name, "containerPort": port, "protocol": proto}
                 for name, port, proto in [("http", r.choice([80, 8080]), "TCP"),
                                           ("metrics", 9090, "TCP"), ("dns", 53, "UDP")]
                 if r.random() < 0.6]
        objects.append({"apiVersion": "v1", "kind": "Pod",
                        "metadata": {"name": f"p{i}", "namespace": ns,
                                     "labels": labels(r, at_least_one=True)},
                        "spec": {"containers": [{"name": "c", "ports": named}]},
                        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})
        pods.append((f"{ns}/p{i}", ip))
    objects += [policy(r, n) for n in range(r.randint(1, 4))]
    return objects, pods


def probes(quick):
    """(protocol, port) pairs: every port the generator uses, range edges, one unused; `quick`
    keeps one of each kind."""
    if quick:
        return [("tcp", 80), ("tcp", 91), ("tcp", 8080), ("udp", 53), ("sctp", 9090)]
    out = []
    for proto in PROTOCOLS:
        for port in [53, 80, 90, 91, 443, 1080, 5432, 8080, 9090, 9100, 31000]:
            out.append((proto, port))
    return out


def parse_ranges(text):
    """nca's endpoint: `ns/pod[Pod]` or comma-separated IP ranges `a-b` / CIDRs / addresses."""
    m = re.fullmatch(r"(.+)\[Pod\]", text.strip())
    if m:
        return ("pod", m.group(1))
    ranges = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part:
            lo, hi = part.split("-", 1)
            ranges.append((int(ipaddress.ip_address(lo)), int(ipaddress.ip_address(hi))))
        else:
            net = ipaddress.ip_network(part, strict=False)
            ranges.append((int(net.network_address), int(net.broadcast_address)))
    return ("ips", ranges)


def parse_connections(text):
    """`All connections` or `{protocols:TCP,dst_ports:80-90,8080}` items -> predicate data."""
    text = text.strip()
    if text == "All connections":
        return "all"
    if text == "No connections":
        return []
    out = []
    for item in re.findall(r"\{([^}]*)\}", text):
        m = re.fullmatch(r"protocols:([A-Za-z0-9,]+?)(?:,dst_ports:(.*))?", item)
        if not m:
            raise ValueError(f"unknown nca connection item {item!r}")
        protos = {p.lower() for p in m.group(1).split(",")}
        spans = None
        if m.group(2):
            spans = []
            for span in m.group(2).split(","):
                lo, _, hi = span.partition("-")
                spans.append((int(lo), int(hi or lo)))
        out.append((protos, spans))
    if not out:
        raise ValueError(f"unknown nca connection set {text!r}")
    return out


def allows(conns, proto, port):
    if conns == "all":
        return True
    for protos, spans in conns:
        if proto in protos and (spans is None or any(lo <= port <= hi for lo, hi in spans)):
            return True
    return False


def nca_connectivity(path):
    out = subprocess.run(["nca", "--connectivity", "-r", path, "-o", "txt_no_fw_rules"],
                         capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"nca failed ({out.returncode}): {out.stderr.strip()}")
    lines = []
    for line in out.stdout.splitlines():
        m = re.fullmatch(r"(.+?) => (.+?) : (.+)", line.strip())
        if m:
            lines.append((parse_ranges(m.group(1)), parse_ranges(m.group(2)),
                          parse_connections(m.group(3))))
    return lines


def side_matches(side, endpoint, ip):
    kind, value = side
    if kind == "pod":
        return endpoint == value
    if endpoint is not None:
        return False
    addr = int(ipaddress.ip_address(ip))
    return any(lo <= addr <= hi for lo, hi in value)


def nca_allows(lines, src, dst, proto, port):
    """src/dst: (endpoint or None, ip)."""
    return any(side_matches(a, *src) and side_matches(b, *dst) and allows(c, proto, port)
               for a, b, c in lines)


def polc_verdict(polc, path, src, dst, proto, port, engine):
    cmd = [polc, "explain", "-f", path, "--from", src, "--to", dst, "--protocol", proto,
           "--port", str(port), "--engine", engine, "--output", "json"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {out.returncode}: {out.stderr.strip()}")
    return json.loads(out.stdout)["verdict"] == "allow"


def dump_yaml(objects):
    # JSON is YAML; both tools read it. One document per object.
    return "".join("---\n" + json.dumps(o) + "\n" for o in objects)


def run_seed(seed, polc, engines, keep, quick):
    objects, pods = cluster(seed)
    directory = keep or tempfile.mkdtemp(prefix="polc-oracle-")
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"seed-{seed}.yaml")
    with open(path, "w") as f:
        f.write(dump_yaml(objects))
    lines = nca_connectivity(path)
    flows = [((a, ip_a), (b, ip_b)) for a, ip_a in pods for b, ip_b in pods if a != b]
    r = random.Random(seed * 7919)
    for ext in r.sample(EXTERNAL, 2):
        pod = r.choice(pods)
        flows += [((None, ext), pod), (pod, (None, ext))]
    checked, allowed, mismatches = 0, 0, []
    for src, dst in flows:
        for proto, port in probes(quick):
            want = nca_allows(lines, src, dst, proto, port)
            allowed += len(engines) if want else 0
            for engine in engines:
                got = polc_verdict(polc, path, src[0] or src[1], dst[0] or dst[1], proto, port,
                                   engine)
                checked += 1
                if got != want:
                    mismatches.append(
                        f"seed {seed}: {src[0] or src[1]} -> {dst[0] or dst[1]} {proto}/{port}: "
                        f"nca {'allow' if want else 'deny'}, polc --engine {engine} "
                        f"{'allow' if got else 'deny'} ({path})")
    if not keep and not mismatches:
        os.remove(path)
        os.rmdir(directory)
    return checked, allowed, mismatches


def seed_list(text):
    out = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--polc", required=True, help="the polc binary")
    ap.add_argument("--seeds", default="1-20", help="e.g. 1-20 or 3,7,100-150")
    ap.add_argument("--engines", default="ir,vm,kernel")
    ap.add_argument("--keep", help="write the cluster files here and keep them")
    ap.add_argument("--quick", action="store_true", help="5 probes per pair instead of 33")
    args = ap.parse_args()
    engines = args.engines.split(",")
    total, allowed, failures = 0, 0, []
    try:
        for seed in seed_list(args.seeds):
            checked, allows_, mismatches = run_seed(seed, args.polc, engines, args.keep, args.quick)
            total += checked
            allowed += allows_
            failures += mismatches
    except (RuntimeError, ValueError, FileNotFoundError) as e:
        print(f"oracle: {e}", file=sys.stderr)
        return 2
    for line in failures:
        print(line)
    print(f"oracle: {total} verdicts compared ({', '.join(engines)}; nca allows {allowed}, "
          f"denies {total - allowed}), {len(failures)} disagree")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
