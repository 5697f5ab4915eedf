"""plugins/filter/preflight.py: every rule of role preflight that it holds, one case per outcome. The lab
tier runs the role on real nodes (tests/lab/test_preflight.py); here each rule gets the inputs a node or
community.crypto would give it."""

from __future__ import annotations

import pytest
from ansible_collections.appliance.runai.plugins.filter import preflight


def by_check(findings: list[dict]) -> dict[str, dict]:
    return {f["check"]: f for f in findings}


# Inputs ---------------------------------------------------------------------------------------------


def test_a_requirements_table_of_known_measures_and_numbers_is_accepted():
    assert (
        preflight.bad_requirements({"control_plane": {"cpus": 2, "memory_mb": 1700.5}, "workers": {}}) == []
    )


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"workers": [2]}, "workers is not a mapping"),
        ({"workers": {"gpus": 1}}, "workers.gpus is not a known measure"),
        ({"workers": {"cpus": -1}}, "workers.cpus=-1 is not a number of 0 or more"),
        ({"workers": {"cpus": "2"}}, "workers.cpus=2 is not a number of 0 or more"),
        ({"workers": {"cpus": True}}, "workers.cpus=True is not a number of 0 or more"),
    ],
)
def test_each_bad_entry_of_the_requirements_table_is_named(table, message):
    assert preflight.bad_requirements(table) == [message]


def test_a_ports_table_of_lists_of_tcp_ports_is_accepted():
    assert preflight.bad_ports({"control_plane": [6443, 2379], "workers": [10250], "none": []}) == []


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"workers": 10250}, "workers is not a list"),
        ({"workers": "10250"}, "workers is not a list"),
        ({"workers": [0]}, "workers: 0 is not a TCP port"),
        ({"workers": [65536]}, "workers: 65536 is not a TCP port"),
        ({"workers": ["80"]}, "workers: 80 is not a TCP port"),
        ({"workers": [True]}, "workers: True is not a TCP port"),
    ],
)
def test_each_bad_entry_of_the_ports_table_is_named(table, message):
    assert preflight.bad_ports(table) == [message]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.100", True),
        ("fd00::1", True),
        ("256.1.1.1", False),
        ("runai.example.com", False),
        ("", False),
    ],
)
def test_the_external_address_must_be_an_ip_address(text, expected):
    assert preflight.is_ip(text) is expected


# The machine ----------------------------------------------------------------------------------------

REQUIREMENTS = {
    "control_plane": {"cpus": 2, "memory_mb": 1700},
    "runai_system": {"cpus": 8, "memory_mb": 1700},
    "workers": {"cpus": 4},
}


def test_the_largest_requirement_of_the_nodes_groups_applies_naming_the_groups_that_ask_it():
    need = preflight.required(REQUIREMENTS, ["control_plane", "runai_system", "k8s_cluster"])
    assert need["cpus"] == {"value": 8, "group": "runai_system"}
    assert need["memory_mb"] == {"value": 1700, "group": "control_plane, runai_system"}
    assert need["disk_gb"] == {"value": 0, "group": ""}


def test_a_node_in_no_group_of_the_table_has_no_requirement():
    assert preflight.required(REQUIREMENTS, ["jumpbox"])["cpus"] == {"value": 0, "group": ""}


@pytest.mark.parametrize(
    ("facts", "status"),
    [
        (
            {"distribution": "Debian", "distribution_version": "12.7", "distribution_major_version": "12"},
            "PASS",
        ),
        (
            {"distribution": "Debian", "distribution_version": "12", "distribution_major_version": "12"},
            "PASS",
        ),
        (
            {"distribution": "Debian", "distribution_version": "11.9", "distribution_major_version": "11"},
            "PROBLEM",
        ),
        (
            {"distribution": "Ubuntu", "distribution_version": "22.04", "distribution_major_version": "22"},
            "PROBLEM",
        ),
    ],
)
def test_the_release_must_be_a_supported_one(facts, status):
    found = preflight.os_finding(facts, {"Debian": [12]})
    assert found["status"] == status
    assert found["needed"] == "Debian 12"
    assert found["found"] == f"{facts['distribution']} {facts['distribution_version']}"


CONTEXT = {"disk_path": "/var", "disk_mount": "/", "disk_error": "", "group_names": ["workers"]}


def test_a_measure_at_or_above_the_requirement_passes():
    found = preflight.measure_finding("cpus", 4, {"value": 4, "group": "workers"}, CONTEXT)
    assert found == {
        "check": "CPUs",
        "status": "PASS",
        "found": "4 logical CPUs",
        "needed": "at least 4 CPUs (workers)",
        "fix": "",
    }


def test_a_measure_below_the_requirement_is_a_problem_with_its_fix():
    found = preflight.measure_finding("disk_free_gb", 3.2, {"value": 15, "group": "workers"}, CONTEXT)
    assert found["status"] == "PROBLEM"
    assert found["found"] == "3.2 GB free in /"
    assert found["fix"] == "free space in / (old images, logs), or enlarge it"


def test_a_disk_that_cannot_be_measured_is_a_problem_saying_why():
    context = {**CONTEXT, "disk_error": "df: /var: No such file or directory"}
    found = preflight.measure_finding("disk_gb", None, {"value": 46, "group": "workers"}, context)
    assert found["status"] == "PROBLEM"
    assert found["found"] == "cannot measure /var: df: /var: No such file or directory"


def test_a_measure_no_group_asks_for_passes_and_says_so():
    found = preflight.measure_finding("memory_mb", 512, {"value": 0, "group": ""}, CONTEXT)
    assert found["status"] == "PASS" and found["needed"] == "no requirement for groups workers"


# Identity -------------------------------------------------------------------------------------------

ME = {"hostname": "worker-1", "macs": ["02:42:ac:1c:04:0b"], "product_uuid": "4c4c4544-0001"}


def test_a_node_unlike_every_other_passes_all_three():
    others = {"worker-2": {"hostname": "worker-2", "macs": ["02:42:ac:1c:04:0c"], "product_uuid": "x"}}
    found = by_check(preflight.identity_findings(ME, others))
    assert [found[c]["status"] for c in ("hostname", "MAC addresses", "product_uuid")] == ["PASS"] * 3


def test_a_cloned_machine_is_named_on_each_shared_identity():
    others = {"worker-2": dict(ME), "worker-3": {"hostname": "worker-3", "macs": [], "product_uuid": "y"}}
    found = by_check(preflight.identity_findings(ME, others))
    assert found["hostname"]["status"] == "PROBLEM"
    assert found["hostname"]["found"] == "worker-1, also the hostname of worker-2"
    assert found["MAC addresses"]["found"] == "02:42:ac:1c:04:0b, also on worker-2"
    assert found["product_uuid"]["found"] == "4c4c4544-0001, also on worker-2"
    assert found["product_uuid"]["fix"].startswith("give each virtual machine its own SMBIOS UUID")


def test_a_hostname_kubernetes_cannot_name_a_node_after_is_a_problem():
    found = by_check(preflight.identity_findings({**ME, "hostname": "Worker_1"}, {}))["hostname"]
    assert found["status"] == "PROBLEM" and found["found"] == "Worker_1, not a valid Kubernetes node name"


def test_an_unreadable_product_uuid_is_a_note_and_the_check_can_be_turned_off():
    assert by_check(preflight.identity_findings({**ME, "product_uuid": "na"}, {}))["product_uuid"][
        "status"
    ] == ("NOTE")
    skipped = by_check(preflight.identity_findings(ME, {"w": dict(ME)}, check_product_uuid=False))
    assert skipped["product_uuid"]["status"] == "SKIP"


def test_a_node_without_mac_addresses_says_none():
    assert by_check(preflight.identity_findings({**ME, "macs": []}, {}))["MAC addresses"]["found"] == "none"


# The Run:ai certificate -----------------------------------------------------------------------------

INPUTS = {
    "cert_file": "/etc/runai/tls.crt",
    "key_file": "/etc/runai/tls.key",
    "ca_file": "/etc/runai/ca.crt",
    "domain": "runai.example.com",
    "min_valid_days": 30,
}
CERT = {
    "public_key": "-----BEGIN PUBLIC KEY-----",
    "public_key_fingerprints": {"sha256": "aa:bb"},
    "subject_alt_name": ["DNS:runai.example.com", "IP:10.0.0.100"],
    "not_before": "20260101000000Z",
    "not_after": "20280101000000Z",
    "valid_at": {"now": True, "soon": True},
}
CHAIN = {"root": {"pem": "..."}}
KEY = {"public_key_fingerprints": {"sha256": "aa:bb"}}


def tls(inputs=None, cert=None, chain=None, key=None) -> dict[str, dict]:
    return by_check(
        preflight.tls_findings(
            inputs or INPUTS, CERT if cert is None else cert, CHAIN if chain is None else chain, key or KEY
        )
    )


def test_a_certificate_for_the_domain_from_the_ca_with_its_key_passes_every_check():
    found = tls()
    assert {check: f["status"] for check, f in found.items()} == {
        "TLS name": "PASS",
        "TLS validity": "PASS",
        "TLS CA": "PASS",
        "TLS key": "PASS",
    }
    assert found["TLS validity"]["found"] == "valid from 2026-01-01 00:00:00 to 2028-01-01 00:00:00 (UTC)"


def test_no_certificate_set_is_skipped_and_an_unreadable_one_is_a_problem():
    assert tls(inputs={**INPUTS, "cert_file": ""})["TLS certificate"]["status"] == "SKIP"
    unreadable = tls(cert={"msg": "not a PEM file"})["TLS certificate"]
    assert unreadable["status"] == "PROBLEM"
    assert unreadable["found"] == "cannot read /etc/runai/tls.crt: not a PEM file"


@pytest.mark.parametrize(
    ("names", "status", "found"),
    [
        (["DNS:*.example.com"], "PASS", "/etc/runai/tls.crt is for *.example.com"),
        (["DNS:RUNAI.example.com"], "PASS", "/etc/runai/tls.crt is for runai.example.com"),
        (["DNS:other.example.org"], "PROBLEM", "/etc/runai/tls.crt is for other.example.org"),
        ([], "PROBLEM", "/etc/runai/tls.crt is for no DNS name (no subjectAltName)"),
    ],
)
def test_the_certificate_must_name_the_domain_or_a_wildcard_for_it(names, status, found):
    result = tls(cert={**CERT, "subject_alt_name": names})["TLS name"]
    assert (result["status"], result["found"]) == (status, found)
    assert result["fix"] == ("issue a certificate for runai_domain" if status == "PROBLEM" else "")


def test_no_domain_skips_the_name():
    assert tls(inputs={**INPUTS, "domain": ""})["TLS name"]["status"] == "SKIP"


@pytest.mark.parametrize(
    ("valid_at", "status", "fix"),
    [
        ({"now": False, "soon": False}, "PROBLEM", "renew the certificate"),
        ({"now": True, "soon": False}, "NOTE", "renew the certificate"),
        ({"now": True, "soon": True}, "PASS", ""),
    ],
)
def test_the_certificate_must_be_valid_now_and_is_noted_when_it_expires_soon(valid_at, status, fix):
    result = tls(cert={**CERT, "valid_at": valid_at})["TLS validity"]
    assert (result["status"], result["fix"]) == (status, fix)


@pytest.mark.parametrize(
    ("inputs", "chain", "status", "found"),
    [
        ({**INPUTS, "ca_file": ""}, {"skipped": True}, "SKIP", "not checked (runai_ca_cert_file is not set)"),
        (
            INPUTS,
            {"msg": "Cannot complete chain. Stuck at cert"},
            "PROBLEM",
            "not signed by the CA of /etc/runai/ca.crt",
        ),
        (INPUTS, {"msg": "Error while reading"}, "PROBLEM", "cannot check the chain: Error while reading"),
    ],
)
def test_the_certificate_must_chain_to_the_given_ca(inputs, chain, status, found):
    result = tls(inputs=inputs, chain=chain)["TLS CA"]
    assert (result["status"], result["found"]) == (status, found)


@pytest.mark.parametrize(
    ("inputs", "key", "status", "found"),
    [
        (
            {**INPUTS, "key_file": ""},
            {"skipped": True},
            "SKIP",
            "not checked (runai_tls_key_file is not set)",
        ),
        (
            INPUTS,
            {"public_key_fingerprints": {"sha256": "cc:dd"}},
            "PROBLEM",
            "/etc/runai/tls.key is not the key of the certificate",
        ),
        (INPUTS, {"msg": "bad decrypt"}, "PROBLEM", "cannot read /etc/runai/tls.key: bad decrypt"),
    ],
)
def test_the_key_must_be_the_certificates(inputs, key, status, found):
    result = tls(inputs=inputs, key=key)["TLS key"]
    assert (result["status"], result["found"]) == (status, found)
    assert bool(result["fix"]) is (status == "PROBLEM")


# The report -----------------------------------------------------------------------------------------


def test_the_failure_lists_each_problem_once_naming_every_host_that_has_it():
    problem = {"check": "operating system", "found": "Debian 11.9", "needed": "Debian 12", "fix": "reinstall"}
    problems = [
        {**problem, "host": "worker-1"},
        {**problem, "host": "worker-2"},
        {"check": "swap", "found": "on", "needed": "off", "fix": "", "host": "worker-1"},
    ]
    message = preflight.failure_message(problems, "3 problem(s) on worker-1, worker-2", "/r.txt")
    assert message.splitlines() == [
        "Preflight found 3 problem(s) on worker-1, worker-2. Report: /r.txt",
        "- worker-1, worker-2: operating system: Debian 11.9; needed: Debian 12; fix: reinstall",
        "- worker-1: swap: on; needed: off",
    ]


# Swap, ports, clock ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("swaps", "disable", "status"),
    [
        ({"areas": [], "error": ""}, True, "PASS"),
        ({"areas": ["/swapfile"], "error": ""}, True, "NOTE"),
        ({"areas": ["/swapfile"], "error": ""}, False, "PROBLEM"),
        ({"areas": [], "error": "permission denied"}, True, "PROBLEM"),
    ],
)
def test_swap_must_be_off_or_about_to_be(swaps, disable, status):
    found = preflight.swap_finding(swaps, disable)
    assert found["status"] == status
    assert bool(found["fix"]) is (not disable)


PORTS = {"ports": [{"port": 6443, "name": "kube-apiserver"}, {"port": 22, "name": "sshd"}], "error": ""}


def test_a_port_kubeadm_needs_in_use_is_a_problem_naming_the_process():
    found = preflight.ports_finding(PORTS, [6443, 10250], ["control_plane"], {"member": False})
    assert (found["status"], found["found"]) == ("PROBLEM", "in use: 6443 (kube-apiserver)")
    assert found["needed"] == "TCP 6443, 10250 free for kubeadm (control_plane)"


def test_free_ports_pass_and_a_member_or_a_node_needing_none_is_skipped():
    assert preflight.ports_finding(PORTS, [10250], ["workers"], {"member": False})["status"] == "PASS"
    assert preflight.ports_finding(PORTS, [6443], ["control_plane"], {"member": True})["status"] == "SKIP"
    skipped = preflight.ports_finding(PORTS, [], [], {"member": False, "group_names": ["jumpbox"]})
    assert (skipped["status"], skipped["found"]) == ("SKIP", "no port to check for groups jumpbox")


def test_ports_that_cannot_be_listed_are_a_problem():
    found = preflight.ports_finding({"ports": [], "error": "no /proc/net/tcp"}, [10250], ["workers"], {})
    assert (found["status"], found["fix"]) == ("PROBLEM", "look at /proc/net/tcp")


@pytest.mark.parametrize(
    ("clock", "status", "found"),
    [
        (
            {"offset": 0.3, "uncertainty": 0.01, "within": True},
            "PASS",
            "0.3 s ahead of the controller (within 0.0 s)",
        ),
        (
            {"offset": -5.0, "uncertainty": 0.02, "within": False},
            "PROBLEM",
            "5.0 s behind the controller (within 0.0 s)",
        ),
        (
            {"offset": -0.04, "uncertainty": 0.01, "within": True},
            "PASS",
            "in step with the controller (within 0.0 s)",
        ),
        ({"failed": True, "msg": "date: not found"}, "PROBLEM", "cannot read the clock: date: not found"),
    ],
)
def test_the_clock_must_be_within_the_skew_allowed(clock, status, found):
    result = preflight.clock_finding(clock, 2)
    assert (result["status"], result["found"]) == (status, found)


# The container runtime ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("docker", "running", "member", "status"),
    [
        ({"driver": "systemd", "error": ""}, True, True, "PASS"),
        ({"driver": "", "error": ""}, False, False, "PASS"),
        ({"driver": "cgroupfs", "error": ""}, True, False, "NOTE"),
        ({"driver": "cgroupfs", "error": ""}, True, True, "PROBLEM"),
        ({"driver": "", "error": "Cannot connect"}, True, False, "PROBLEM"),
    ],
)
def test_docker_must_use_the_systemd_cgroup_driver_or_be_switchable(docker, running, member, status):
    assert preflight.cgroup_driver_finding(docker, running, member)["status"] == status


CONTAINERD_FLAGS = 'KUBELET_KUBEADM_ARGS="--container-runtime=remote --container-runtime-endpoint=unix:///run/containerd/containerd.sock"'


@pytest.mark.parametrize(
    ("flags", "runtime", "member", "status"),
    [
        ({"content": CONTAINERD_FLAGS}, "containerd", True, "PASS"),
        ({"content": 'KUBELET_KUBEADM_ARGS="--network-plugin=cni"'}, "docker", True, "PASS"),
        ({"content": CONTAINERD_FLAGS}, "docker", True, "PROBLEM"),
        ({"content": None, "error": "No such file"}, "docker", True, "PROBLEM"),
        ({"content": None}, "docker", False, "SKIP"),
    ],
)
def test_a_members_kubelet_must_use_the_runtime_of_the_inventory(flags, runtime, member, status):
    found = preflight.kubelet_runtime_finding(flags, runtime, member)
    assert found["status"] == status
    if status == "PROBLEM" and flags["content"]:
        assert found["fix"].startswith("set appliance_container_runtime: containerd")


@pytest.mark.parametrize(
    ("units", "runtime", "status"),
    [
        ({"docker.service": "active", "crio.service": "inactive"}, "docker", "PASS"),
        ({"docker.service": "active", "crio.service": "active"}, "docker", "PROBLEM"),
        ({"docker.service": "active", "crio.service": "inactive"}, "containerd", "NOTE"),
        ({"docker.service": "active", "crio.service": ""}, "docker", "PROBLEM"),
    ],
)
def test_no_other_runtime_may_run(units, runtime, status):
    found = preflight.other_runtimes_finding(units, ["crio.service"], runtime)
    assert found["status"] == status
    assert (found["fix"] == "systemctl disable --now crio.service, or remove it") is (
        units["crio.service"] == "active"
    )


# Run:ai's name, NFS server, GPUs -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lines", "domain", "ip", "status"),
    [
        (
            ["10.0.0.100      STREAM runai.example.com", "10.0.0.100      DGRAM"],
            "runai.example.com",
            "10.0.0.100",
            "PASS",
        ),
        (["10.0.0.7        STREAM runai.example.com"], "runai.example.com", "10.0.0.100", "PROBLEM"),
        ([], "runai.example.com", "10.0.0.100", "PROBLEM"),
        ([], "", "10.0.0.100", "SKIP"),
        ([], "runai.example.com", "", "SKIP"),
    ],
)
def test_the_name_of_run_ai_must_resolve_to_its_external_address(lines, domain, ip, status):
    found = preflight.dns_finding({"stdout_lines": lines}, domain, ip, "the controller")
    assert found["status"] == status
    if lines and status == "PROBLEM":
        assert found["found"] == "runai.example.com resolves to 10.0.0.7 on the controller"
    if not lines and status == "PROBLEM":
        assert found["found"] == "runai.example.com does not resolve on the controller"


@pytest.mark.parametrize(
    ("connection", "server", "status"),
    [
        ({"state": "started"}, "10.0.0.5", "PASS"),
        ({"msg": "Timeout"}, "10.0.0.5", "PROBLEM"),
        ({}, "", "SKIP"),
    ],
)
def test_the_nfs_server_must_answer_on_nfsv4s_port(connection, server, status):
    found = preflight.nfs_finding(connection, server, 2049, 5)
    assert found["status"] == status
    if status == "PROBLEM":
        assert found["found"] == "no answer on TCP 10.0.0.5:2049 within 5 s"


TWO_GPUS = [
    "GPU 0: NVIDIA A100-SXM4-80GB (UUID: GPU-1)",
    "GPU 1: NVIDIA A100-SXM4-80GB (UUID: GPU-2)",
]


@pytest.mark.parametrize(
    ("smi", "expected", "status"),
    [
        ({"rc": 0, "stdout_lines": TWO_GPUS}, 0, "PASS"),
        ({"rc": 0, "stdout_lines": TWO_GPUS}, 2, "PASS"),
        ({"rc": 0, "stdout_lines": TWO_GPUS}, 8, "PROBLEM"),
        ({"rc": 0, "stdout_lines": []}, 0, "PROBLEM"),
        ({"rc": 9, "stdout_lines": [], "stderr": "NVIDIA-SMI has failed"}, 0, "PROBLEM"),
        ({"rc": 127, "stdout_lines": []}, 0, "SKIP"),
    ],
)
def test_a_gpu_worker_with_a_driver_must_list_its_gpus(smi, expected, status):
    found = preflight.gpus_finding(smi, expected)
    assert found["status"] == status
    if smi["rc"] == 0 and smi["stdout_lines"]:
        assert found["found"] == "2 GPUs: GPU 0: NVIDIA A100-SXM4-80GB; GPU 1: NVIDIA A100-SXM4-80GB"
    if smi["rc"] == 9:
        assert found["found"] == "nvidia-smi -L fails: NVIDIA-SMI has failed"
