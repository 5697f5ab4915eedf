"""playbooks/preflight.yml on fresh lab nodes: the lab as it is passes, Run:ai inputs that are right pass,
and broken inputs stop the run with every problem in one failure and in the report, changing nothing,
in --check too.

Runs a lab of its own (APPLIANCE_LAB_NAME=labpre on 172.28.5.0/24, two workers); needs no bundle.
The lab's groups: cp-1 control_plane, worker-1 gpu_workers, worker-2 cpu_workers and runai_system.
"""

from __future__ import annotations

import copy
import datetime
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import PROJECT, run_cli, run_playbook

pytestmark = pytest.mark.lab

LAB_ENV = {"APPLIANCE_LAB_NAME": "labpre", "APPLIANCE_LAB_SUBNET": "172.28.5.0/24"}
INVENTORY = PROJECT / "inventories" / "labpre" / "hosts.yml"
NODES = ("cp-1", "worker-1", "worker-2")
# The lab network's gateway is this machine: the tests' NFS stand-in listens there, or nothing does.
GATEWAY = "172.28.5.1"
# On a docker volume (a real ext4), where swapon works; all nodes share the kernel, so all see it.
SWAP_FILE = "/var/lib/kubelet/preflight-test.swap"
MARKER = "/run/preflight-test.marker"


def lab_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env=LAB_ENV, timeout=timeout)


def on(node: str, script: str, *, check: bool = True) -> str:
    """SCRIPT run as root on NODE (docker exec, as `appliance lab exec` does, without starting the CLI)."""
    result = subprocess.run(
        ["docker", "exec", f"appliance-labpre-{node}", "sh", "-c", script],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0 or not check, result.stderr
    return result.stdout


def preflight(*extra: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    return run_playbook(LAB_ENV, "playbooks/preflight.yml", *extra, timeout=600)


def concurrently(*runs: list[str]) -> list[tuple[subprocess.CompletedProcess[str], dict]]:
    """One `preflight` run per argument list, side by side (they only read), started a second apart so
    that each keeps its own log."""
    with ThreadPoolExecutor(len(runs)) as pool:
        futures = []
        for args in runs:
            futures.append(pool.submit(preflight, *args))
            time.sleep(1.1)
        return [future.result() for future in futures]


def changed(summary: dict) -> dict[str, int]:
    return {host: tally["changed"] for host, tally in summary["hosts"].items()}


def one_line(text: str) -> str:
    return " ".join(text.split())


def report_lines(report: Path, status: str) -> list[str]:
    return [line.strip() for line in report.read_text().splitlines() if line.strip().startswith(status)]


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _certificate(key, name: str, issuer_key, issuer: str, *, ca: bool = False) -> bytes:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def _private(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    """Short paths: the failure message names files, and `appliance run` keeps 2000 characters of it."""
    directory = Path(tempfile.mkdtemp(prefix="preflight-"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def pki(workdir) -> dict[str, Path]:
    """The appliance's CA and a certificate for `localhost` from it; and a certificate for another name
    from another CA of the same name, and a key that belongs to neither."""
    directory = workdir / "pki"
    directory.mkdir()
    ca_key, other_ca_key, key, stray_key = _key(), _key(), _key(), _key()
    files = {
        "ca": _certificate(ca_key, "Appliance CA", ca_key, "Appliance CA", ca=True),
        "good": _certificate(key, "localhost", ca_key, "Appliance CA"),
        "good_key": _private(key),
        "other": _certificate(key, "elsewhere.example", other_ca_key, "Appliance CA"),
        "stray_key": _private(stray_key),
    }
    paths = {}
    for name, content in files.items():
        paths[name] = directory / f"{name}.pem"
        paths[name].write_bytes(content)
    return paths


# A STAND-IN nvidia-smi on worker-1 (no GPU here) that lists two GPUs as a real driver's `nvidia-smi -L` does.
NVIDIA_SMI_L = """#!/bin/sh
# TEST STAND-IN for nvidia-smi -L (tests/lab/test_preflight.py): no GPU here.
echo "GPU 0: NVIDIA A100-SXM4-80GB (UUID: GPU-4b9f2c1e-8d3a-4f6b-9e21-7c5d0a3b8e14)"
echo "GPU 1: NVIDIA A100-SXM4-80GB (UUID: GPU-9a1e3f5d-2c4b-4e6a-8f10-3b5d7e9c1a2f)"
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[None]:
    up = lab_cli("lab", "up", "--workers", "2")
    assert up.returncode == 0, up.stderr
    on(
        "worker-1",
        f"cat > /usr/local/bin/nvidia-smi <<'EOF'\n{NVIDIA_SMI_L}EOF\nchmod 0755 /usr/local/bin/nvidia-smi",
    )
    yield
    lab_cli("lab", "down")


class NfsStandIn:
    """Accepts TCP connections on the gateway's port 2049, as an NFS server's port does."""

    def __enter__(self) -> NfsStandIn:
        self.server = socket.create_server((GATEWAY, 2049), reuse_port=False)
        self.server.settimeout(0.2)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()
        return self

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                connection, _ = self.server.accept()
                connection.close()
            except TimeoutError:
                continue

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join()
        self.server.close()


@pytest.fixture(scope="module")
def passing(lab, pki, workdir) -> dict[str, tuple[subprocess.CompletedProcess[str], dict, Path]]:
    """The lab as it is; and Run:ai inputs that are right, in --check: localhost resolves to 127.0.0.1
    everywhere, the certificate is for localhost from the CA, and the NFS stand-in answers. That run keeps
    its controller-side state under appliance_state_dir (issue 23: an AWX job's persistent storage), so its
    report is <appliance_state_dir>/preflight/<inventory directory>.txt."""
    good = {
        "runai_domain": "localhost",
        "runai_external_ip": "127.0.0.1",
        "runai_tls_cert_file": str(pki["good"]),
        "runai_tls_key_file": str(pki["good_key"]),
        "runai_ca_cert_file": str(pki["ca"]),
        "runai_nfs_server": GATEWAY,
        "appliance_state_dir": str(workdir / "state"),
    }
    (workdir / "good.yml").write_text(yaml.safe_dump(good))
    with NfsStandIn():
        as_is, good_inputs = concurrently(
            ["-e", f"preflight_report_file={workdir / 'as-is.txt'}"],
            ["--check", "-e", f"@{workdir / 'good.yml'}"],
        )
    good_report = workdir / "state" / "preflight" / f"{LAB_ENV['APPLIANCE_LAB_NAME']}.txt"
    return {"as_is": (*as_is, workdir / "as-is.txt"), "good": (*good_inputs, good_report)}


@pytest.fixture(scope="module")
def broken(lab, pki, workdir) -> dict:
    """worker-1 too small for its group and with swap on that prereqs may not turn off; a Run:ai name that
    does not resolve, a certificate for another name from another CA with a key of neither, an NFS server
    that does not answer. Run, and side by side with --check; swap is on only while they run (every lab
    on this machine sees it)."""
    directory = workdir / "broken"
    directory.mkdir()
    inventory = yaml.safe_load(INVENTORY.read_text())
    requirements = copy.deepcopy(inventory["all"]["vars"]["preflight_requirements"])
    requirements["gpu_workers"] = {"memory_mb": 32768}  # worker-1 has this machine's 24 GiB
    inventory["all"]["hosts"]["worker-1"].update(
        {"prereqs_swap_disable": False, "preflight_requirements": requirements, "preflight_gpus_expected": 4}
    )
    (directory / "hosts.yml").write_text(yaml.safe_dump(inventory, sort_keys=False))
    variables = {
        "runai_domain": "runai.appliance.invalid",
        "runai_external_ip": "10.11.12.13",
        "runai_tls_cert_file": str(pki["other"]),
        "runai_tls_key_file": str(pki["stray_key"]),
        "runai_ca_cert_file": str(pki["ca"]),
        "runai_nfs_server": GATEWAY,
        "preflight_nfs_timeout": 2,
    }
    (directory / "vars.yml").write_text(yaml.safe_dump(variables))
    runs = {}
    try:
        on(
            "worker-1",
            f"dd if=/dev/zero of={SWAP_FILE} bs=1M count=16 status=none && chmod 0600 {SWAP_FILE} && "
            f"mkswap {SWAP_FILE} > /dev/null && swapon {SWAP_FILE}",
        )
        for node in NODES:
            on(node, f"touch {MARKER}")
        time.sleep(1)  # a file written by a run is newer than the marker, also on a coarse clock
        args = ["-i", str(directory / "hosts.yml"), "-e", f"@{directory / 'vars.yml'}"]
        results = concurrently(
            [*args, "-e", f"preflight_report_file={directory / 'run.txt'}"],
            [*args, "-e", f"preflight_report_file={directory / 'check.txt'}", "--check"],
        )
        for mode, (result, summary) in zip(("run", "check"), results, strict=True):
            runs[mode] = {"result": result, "summary": summary, "report": directory / f"{mode}.txt"}
        runs["swaps"] = on("worker-1", "cat /proc/swaps")
        # Whatever a run wrote on a node since the marker, but for the journal and /tmp's own entry.
        runs["written"] = {
            node: on(
                node,
                f"find / /var/lib/kubelet /var/lib/docker /var/lib/containerd -xdev -newer {MARKER} "
                "-not -path '/var/log/journal/*' -not -path /tmp -not -path '/proc/*' 2>/dev/null || true",
            ).split()
            for node in NODES
        }
    finally:
        on("worker-1", f"swapoff {SWAP_FILE}; rm -f {SWAP_FILE}", check=False)
        # The nodes' kernel is this machine's: say so loudly if the swap file is still on.
        assert SWAP_FILE not in Path("/proc/swaps").read_text(), f"swapoff {SWAP_FILE} in worker-1 by hand"
    return runs


def test_the_lab_as_is_passes_with_no_change_and_a_report(passing):
    result, summary, report = passing["as_is"]
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr
    assert set(changed(summary)) == set(NODES)
    assert set(changed(summary).values()) == {0}
    assert (report.stat().st_mode & 0o777) == 0o644
    passed = report_lines(report, "PASS")
    for node in NODES:
        assert f"\n{node}\n" in report.read_text()
    assert len(passed) >= 3 * 10, report.read_text()
    assert any(
        line.startswith("PASS    ports: free: 2379, 2380, 6443, 10250, 10257, 10259;") for line in passed
    )
    assert not report_lines(report, "PROBLEM")
    # The GPUs as a driver lists them (their UUIDs left out of the report).
    assert (
        "PASS    GPUs: 2 GPUs: GPU 0: NVIDIA A100-SXM4-80GB; GPU 1: NVIDIA A100-SXM4-80GB;"
        in report.read_text()
    )


def test_run_ai_inputs_that_are_right_pass_in_check_mode(passing):
    result, summary, report = passing["good"]
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr
    assert set(changed(summary).values()) == {0}
    text = report.read_text()
    assert "Nothing was changed" in text and "--check" in text
    passed = report_lines(report, "PASS")
    for check in ("runai_domain", "TLS name", "TLS validity", "TLS CA", "TLS key"):
        assert any(line.startswith(f"PASS    {check}:") for line in passed), (check, text)
    assert sum(line.startswith("PASS    NFS server:") for line in passed) == len(NODES)


def test_broken_inputs_stop_the_run_with_every_problem_in_one_failure(broken):
    result, summary = broken["run"]["result"], broken["run"]["summary"]
    assert result.returncode == 1, result.stdout[-4000:] + result.stderr
    assert len(summary["failures"]) == 1, summary["failures"]
    failure = summary["failures"][0]
    assert failure["task"] == "Stop the run when a node has a problem"
    message = one_line(failure["message"])
    assert not message.endswith("..."), "the message was cut"
    assert "- worker-1: memory: 24" in message and "needed: at least 32768 MB (gpu_workers)" in message
    assert f"- worker-1: swap: swap on: {SWAP_FILE}" in message
    assert "- worker-1: GPUs: 2 GPUs: GPU 0: NVIDIA A100-SXM4-80GB; GPU 1: NVIDIA A100-SXM4-80GB;" in message
    assert "needed: 4 GPUs (preflight_gpus_expected)" in message
    assert "prereqs_swap_disable is false for this node" in message
    assert "- controller: runai_domain: runai.appliance.invalid does not resolve on the controller" in message
    assert "- cp-1: runai_domain: runai.appliance.invalid does not resolve on cp-1" in message
    # On the other nodes prereqs turns swap off: a note, not a problem.
    assert "cp-1: swap" not in message and "worker-2: swap" not in message


def test_a_certificate_for_another_name_from_another_ca_and_a_stray_key_are_reported(broken, pki):
    message = one_line(broken["run"]["summary"]["failures"][0]["message"])
    assert f"- controller: TLS name: {pki['other']} is for elsewhere.example" in message
    assert f"- controller: TLS CA: not signed by the CA of {pki['ca']}" in message
    assert f"- controller: TLS key: {pki['stray_key']} is not the key of the certificate" in message


def test_an_nfs_server_that_does_not_answer_is_reported_from_every_node(broken):
    message = one_line(broken["run"]["summary"]["failures"][0]["message"])
    assert f"- cp-1, worker-1, worker-2: NFS server: no answer on TCP {GATEWAY}:2049 within 2 s" in message


def test_the_report_lists_every_problem_and_the_notes(broken):
    report = broken["run"]["report"]
    problems = report_lines(report, "PROBLEM")
    checks = [line.split(":")[0].split(None, 1)[1] for line in problems]
    assert sorted(checks) == sorted(
        ["memory", "swap", "GPUs", "runai_domain", "runai_domain", "TLS name", "TLS CA", "TLS key"]
        + ["NFS server"] * 3
    ), report.read_text()
    notes = report_lines(report, "NOTE")
    assert len([line for line in notes if line.startswith("NOTE    swap: swap on")]) == 2, report.read_text()


def test_nothing_changed_on_the_nodes(broken):
    for mode in ("run", "check"):
        assert set(changed(broken[mode]["summary"]).values()) == {0}, mode
    assert SWAP_FILE in broken["swaps"], "swap was turned off"
    assert broken["written"] == {node: [] for node in NODES}


def test_check_mode_stops_the_same_way(broken):
    run, check = broken["run"], broken["check"]
    assert check["result"].returncode == 1
    assert [f["task"] for f in check["summary"]["failures"]] == [
        f["task"] for f in run["summary"]["failures"]
    ]
    assert (
        check["summary"]["failures"][0]["message"].replace("check.txt", "run.txt")
        == (run["summary"]["failures"][0]["message"])
    )
    strip = [line for line in run["report"].read_text().splitlines() if not line.startswith("Written:")]
    again = [line for line in check["report"].read_text().splitlines() if not line.startswith("Written:")]
    assert again == strip


def test_outside_the_lab_an_unpinned_or_malformed_bundle_pin_stops_the_run_naming_the_command(lab):
    """Issue 24: outside the lab (appliance_require_pins, which only the lab's inventory turns off) the
    bundle must be named by its manifest's sha256; validate.yml refuses a run without it, with the command
    that prints it, and a value that is not a sha256, before any change."""
    result, summary = run_playbook(LAB_ENV, "playbooks/validate.yml", "-e", "appliance_require_pins=true")
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr
    (failure,) = {one_line(failure["message"]) for failure in summary["failures"]}
    assert failure.startswith("appliance_bundle_manifest_sha256 is not set"), failure
    assert "sha256sum OUT/manifest.json" in failure and "Nothing was changed." in failure
    assert set(changed(summary).values()) == {0}
    result, summary = run_playbook(
        LAB_ENV, "playbooks/validate.yml", "-e", "appliance_require_pins=true",
        "-e", "appliance_bundle_manifest_sha256=ABC123",
    )  # fmt: skip
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr
    (failure,) = {one_line(failure["message"]) for failure in summary["failures"]}
    assert 'appliance_bundle_manifest_sha256="ABC123" is not a sha256' in failure, failure
