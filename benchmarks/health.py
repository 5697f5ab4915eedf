"""Benchmark of the GPU health loop on a live cluster: prints detection-to-taint latency (p50, p99) and the
agent's CPU and memory while idle and while it reads 10,000 kernel lines per second.

    python benchmarks/health.py [--rounds N] [--keep]

Runs its own lab (APPLIANCE_LAB_NAME=benchhealth on 172.28.13.0/24: cp-1 and worker-1, a GPU worker) built
with `appliance bootstrap` from the lab's offline bundle (not timed), with the real agent on worker-1 and
the real controller on cp-1.

1. latency: a shell kept open on worker-1 appends an Xid 79 line to the file the lab's agent follows
   (lab-vars.yml); the clock starts when the line is handed to that shell and stops when a watch of the
   API server, opened before, shows the fault taint on worker-1. Then the node is re-admitted (the real
   appliance.health.operations.readmit with the lab's admin kubeconfig; the QA check is not timed) and
   the next round starts once the agent saw the node healthy again.
2. agent resources: the agent's CPU time (utime + stime of its process) and RSS, over 30 s idle, then over
   30 s while a writer on worker-1 appends 10,000 lines per second (kernel lines of a busy GPU node:
   network, storage, cgroup and audit messages, one in a thousand an informational Xid 63) in batches of
   1,000 every 0.1 s; the agent's own line counter (its metrics) shows it read them all.
3. the remediation loop (issue 22), `--loop-rounds` times: with gpu_health_remediation=auto and a stand-in
   for nvidia-smi on worker-1 (no GPU here; tests/lab/nvidia-smi-stand-in.sh), an Xid 79 line, then a poll
   of worker-1's Node object every 0.2 s notes when each step is first seen: the fault taint, the
   controller's record in draining, remediating (the agent's instruction written), confirmed (the agent
   reported the new boot; worker-1's container restarted once, checked), and the condition
   GPUHealthy=True with reason Remediated (QA passed, taints removed). The remediation history annotation
   is cleared between rounds (else the third round would be held by gpu_health_max_remediations).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from lab_cli import BIN, appliance

from appliance.health import node as nodeapi
from appliance.health import operations
from appliance.health import remediation as loop
from appliance.health.kube import Client

ENV = {**os.environ, "APPLIANCE_LAB_NAME": "benchhealth", "APPLIANCE_LAB_SUBNET": "172.28.13.0/24"}
FEED = "/var/log/appliance-kernel-feed.log"
XID79 = "NVRM: Xid (PCI:0000:4e:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus."
TICKS = os.sysconf("SC_CLK_TCK")
STAND_IN = Path(__file__).resolve().parents[1] / "tests/lab/nvidia-smi-stand-in.sh"
STEPS = ("taint", "draining", "remediating", "confirmed", "readmitted")

# Runs on worker-1: 10,000 lines/s for SECONDS, in batches of 1,000 every 0.1 s.
WRITER = r"""
import sys, time
lines = [
    "[%d.%06d] IPv6: ADDRCONF(NETDEV_CHANGE): cali%04x: link becomes ready",
    "[%d.%06d] audit: type=1400 audit(1700000000.%d:%d): apparmor=\"STATUS\" operation=\"profile_load\"",
    "[%d.%06d] EXT4-fs (nvme0n1p%d): mounted filesystem with ordered data mode. Opts: (null)",
    "[%d.%06d] cni0: port %d(veth%04x) entered forwarding state",
]
xid = ("[%d.%06d] NVRM: Xid (PCI:0000:4e:00): 63, pid=%d, Row Remapper: New row marked for remapping, "
       "reset gpu to activate.")
seconds = float(sys.argv[1])
n = 0
with open(sys.argv[2], "a") as out:
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        batch = []
        for _ in range(1000):
            n += 1
            template = xid if n % 1000 == 0 else lines[n % 4]
            values = (n, n % 999999, n % 8, n % 9999, n, n, n)[: template.count("%")]
            batch.append(template % values + "\n")
        out.write("".join(batch))
        out.flush()
        time.sleep(max(0.0, start + n / 10000 - time.monotonic()))
print(n)
"""


def on(node: str, script: str) -> str:
    return appliance(ENV, "lab", "exec", node, "--", "sh", "-c", script)


class NodeShell:
    """A shell kept open on a lab node: a command reaches it in a write, not a docker exec."""

    def __init__(self, node: str) -> None:
        self.process = subprocess.Popen(
            [str(BIN / "appliance"), "lab", "exec", node, "--", "sh"],
            env=ENV,
            stdin=subprocess.PIPE,
            text=True,
        )

    def send(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(10)


def agent_usage() -> tuple[float, int]:
    """CPU seconds (user + system) and RSS in KiB of worker-1's agent process."""
    pid = on("worker-1", "systemctl show -p MainPID --value appliance-gpu-health-agent").strip()
    stat, status = on("worker-1", f"cat /proc/{pid}/stat; echo ===; cat /proc/{pid}/status").split("===")
    fields = stat.rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / TICKS
    rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return cpu, rss


def measure_latency(client: Client, rounds: int) -> list[float]:
    shell = NodeShell("worker-1")
    latencies = []
    try:
        for _ in range(rounds):
            item = nodeapi.get_node(client, "worker-1")
            version = item["metadata"]["resourceVersion"]
            seen = threading.Event()

            def watch(version: str = version, seen: threading.Event = seen) -> None:
                path = "/api/v1/nodes?fieldSelector=metadata.name%3Dworker-1"
                for event in client.watch(path, version, 60):
                    if nodeapi.fault_taint(event.get("object", {})):
                        seen.set()
                        return

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            time.sleep(0.5)  # the watch is open
            started = time.monotonic()
            shell.send(f"echo {XID79!r} >> {FEED}")
            if not seen.wait(30):
                sys.exit("no taint on worker-1 within 30 s of an Xid 79 line")
            latencies.append(time.monotonic() - started)
            operations.readmit(client, "worker-1", "benchmarks/health.py: no QA, a benchmark round")
            deadline = time.monotonic() + 30
            while nodeapi.fault_of(nodeapi.get_node(client, "worker-1")) or time.monotonic() < started + 3:
                if time.monotonic() > deadline:
                    sys.exit("worker-1 did not stay healthy after re-admission")
                time.sleep(0.2)
    finally:
        shell.close()
    return latencies


def lines_read() -> int:
    """The agent's own count of the kernel lines it read (its metrics)."""
    script = "import urllib.request as u; print(u.urlopen('http://127.0.0.1:9465/metrics').read().decode())"
    metrics = on("worker-1", f'python3 -c "{script}"')
    line = next(line for line in metrics.splitlines() if line.startswith("appliance_gpu_health_lines_total"))
    return int(float(line.split()[-1]))


def measure_agent(seconds: float) -> tuple[tuple[float, int], tuple[float, int], int, int]:
    cpu0, rss_idle_start = agent_usage()
    time.sleep(seconds)
    cpu1, rss_idle = agent_usage()
    on("worker-1", f"cat > /tmp/writer.py <<'EOF'\n{WRITER}\nEOF")
    before = lines_read()
    written = int(on("worker-1", f"python3 /tmp/writer.py {seconds} {FEED}").strip())
    cpu2, rss_busy = agent_usage()
    time.sleep(1)  # the last batch is read
    read = lines_read() - before
    idle = ((cpu1 - cpu0) / seconds, max(rss_idle, rss_idle_start))
    return idle, ((cpu2 - cpu1) / seconds, rss_busy), written, read


def this_rounds_fault(node: dict, since: float) -> bool:
    """Whether worker-1's GPUHealthy=False is the fault of a round that began at SINCE (epoch seconds): the
    previous round left the condition True with reason Remediated, which must not count for this one."""
    fault = nodeapi.fault_of(node)
    return fault is not None and (nodeapi.parse_time(fault.since) or 0) >= int(since)


def loop_step(node: dict) -> str | None:
    """How far worker-1's remediation has come, as the Node object shows it."""
    condition = next((c for c in node["status"].get("conditions") or [] if c.get("type") == "GPUHealthy"), {})
    if condition.get("status") == "True" and condition.get("reason") == "Remediated":
        return "readmitted"
    record = loop.view(node).record
    if record is not None and record.step in STEPS:
        return record.step
    if record is not None and record.step == "failed":
        sys.exit(f"the remediation failed: {record.reason} {record.detail}")
    return "taint" if nodeapi.fault_taint(node) else None


def measure_loop(client: Client, rounds: int) -> list[dict[str, float]]:
    """Seconds from the Xid 79 line to the first sight of each step, per round."""
    appliance(ENV, "run", "playbooks/gpu_health.yml", "-e", json.dumps({"gpu_health_remediation": "auto"}))
    on("worker-1", f"cat > /usr/local/bin/nvidia-smi <<'EOF'\n{STAND_IN.read_text()}EOF\n")
    on("worker-1", "chmod 0755 /usr/local/bin/nvidia-smi")
    results = []
    for _ in range(rounds):
        boots = container_restarts()
        patch = {"metadata": {"annotations": {loop.HISTORY: None}}}
        client.patch("/api/v1/nodes/worker-1", patch, "merge")
        seen: dict[str, float] = {}
        started, began = time.monotonic(), time.time()
        on("worker-1", f"echo {XID79!r} >> {FEED}")
        faulted = False  # until this round's fault is on the node, what it shows is the last round's
        while "readmitted" not in seen:
            if time.monotonic() - started > 900:
                sys.exit(f"worker-1 not re-admitted within 900 s; steps seen: {seen}")
            try:
                node = nodeapi.get_node(client, "worker-1")
                faulted = faulted or this_rounds_fault(node, began)
                step = loop_step(node) if faulted else None
            except OSError:
                step = None  # the API server briefly unreachable
            if not faulted and time.monotonic() - started > 30:
                sys.exit("the Xid 79 line did not set GPUHealthy=False on worker-1 within 30 s")
            if step is not None:
                for passed in STEPS[
                    : STEPS.index(step) + 1
                ]:  # a step between two polls: seen at the later one
                    seen.setdefault(passed, time.monotonic() - started)
            time.sleep(0.2)
        deadline = time.monotonic() + 30  # docker may count the restart a moment after the node is back
        while container_restarts() == boots and time.monotonic() < deadline:
            time.sleep(0.5)
        if container_restarts() != boots + 1:
            agent = loop.agent_condition(nodeapi.get_node(client, "worker-1"))
            sys.exit(
                f"worker-1's container restarted {container_restarts() - boots} times in a round, not once "
                f"(steps seen: {seen}; the agent: {agent.get('reason')}: {agent.get('message')})"
            )
        results.append(seen)
    return results


def container_restarts() -> int:
    """How often worker-1's container restarted: once per reboot of the node (lab nodes: on-failure)."""
    name = f"appliance-{ENV['APPLIANCE_LAB_NAME']}-worker-1"
    result = subprocess.run(
        ["docker", "inspect", "-f", "{{.RestartCount}}", name], capture_output=True, text=True
    )
    return int(result.stdout)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--loop-rounds", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="leave the lab up afterwards")
    options = parser.parse_args()

    appliance(ENV, "lab", "bundle")
    appliance(ENV, "lab", "up", "--workers", "1")
    try:
        appliance(ENV, "bootstrap", "--json")
        client = Client(Path(appliance(ENV, "lab", "kubeconfig").strip()))
        latencies = measure_latency(client, options.rounds)
        (idle_cpu, idle_rss), (busy_cpu, busy_rss), written, read = measure_agent(options.seconds)
        loops = measure_loop(client, options.loop_rounds)
    finally:
        if not options.keep:
            appliance(ENV, "lab", "down")
    rate = written / options.seconds
    p50, p99 = statistics.median(latencies), percentile(latencies, 0.99)
    rows = [
        (f"detection-to-taint, p50 of {len(latencies)} rounds", f"{p50 * 1000:.0f} ms", "target < 2 s"),
        (f"detection-to-taint, p99 of {len(latencies)} rounds", f"{p99 * 1000:.0f} ms", "target < 2 s"),
        ("detection-to-taint, max", f"{max(latencies) * 1000:.0f} ms", ""),
        (f"agent CPU, idle ({options.seconds:.0f} s)", f"{idle_cpu * 100:.2f} % of a core", ""),
        ("agent RSS, idle", f"{idle_rss / 1024:.1f} MiB", ""),
        (f"agent CPU, {rate:,.0f} lines/s", f"{busy_cpu * 100:.2f} % of a core", ""),
        (f"agent RSS, {rate:,.0f} lines/s", f"{busy_rss / 1024:.1f} MiB", ""),
        ("lines written / read by the agent", f"{written:,} / {read:,}", ""),
    ]
    rows.append(
        (
            f"loop: Xid 79 line to the taint, median of {len(loops)}",
            f"{statistics.median(r['taint'] for r in loops):.1f} s",
            "",
        )
    )
    for step, earlier in zip(STEPS[1:], STEPS, strict=False):
        spans = [r[step] - r.get(earlier, r[step]) for r in loops if step in r]
        label = f"loop: {earlier} to {step}, median of {len(spans)}"
        rows.append((label, f"{statistics.median(spans):.1f} s" if spans else "not seen", ""))
    totals = [r["readmitted"] for r in loops]
    rows.append(
        (
            f"loop: Xid 79 line to re-admitted, median of {len(totals)}",
            f"{statistics.median(totals):.1f} s",
            "",
        )
    )
    rows.append(("loop: Xid 79 line to re-admitted, max", f"{max(totals):.1f} s", ""))
    width = max(len(label) for label, _, _ in rows)
    print(
        "lab: cp-1 + worker-1 (GPU worker); real agent, controller and API server; no GPU (the loop's QA and"
    )
    print("     reset use tests/lab/nvidia-smi-stand-in.sh; its reboot restarts worker-1's container)")
    for label, figure, target in rows:
        print(f"{label:<{width}}  {figure:>18}  {target}".rstrip())


if __name__ == "__main__":
    main()
