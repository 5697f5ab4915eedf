"""Filters of role preflight: its rules, as functions that judge what the role read and return findings.

A finding is {check, status, found, needed, fix}; status is PASS, NOTE, PROBLEM or SKIP, and a PROBLEM
stops the run before any change (roles/preflight). The role reads (facts, module node_probe, the
community.crypto modules), calls one of these to judge, and reports; tests/unit/test_preflight_rules.py
has a case for every rule. Kubespray's roles/validate_inventory is the model: one rule, one message.
"""

from __future__ import annotations

DOCUMENTATION = r"""
name: preflight_tls
author: Appliance toolkit maintainers (@appliance-maintainers)
short_description: Role preflight's rules (this file holds several filters)
description:
  - C(preflight_bad_requirements), C(preflight_bad_ports), C(preflight_is_ip) judge the role's input tables.
  - C(preflight_required), C(preflight_os), C(preflight_measure) judge a node's release and size against
    its inventory groups.
  - C(preflight_identity) judges its hostname, MAC addresses and product_uuid against the other nodes'.
  - C(preflight_tls) judges the Run:ai certificate, its CA and key from what community.crypto read.
  - C(preflight_failure_message) writes the one failure that lists every problem.
positional: _input
options:
  _input:
    description: What the rule judges (see each function).
    type: raw
    required: true
"""

import datetime
import ipaddress
import re

MEASURES = ("cpus", "memory_mb", "disk_gb", "disk_free_gb")
MEASURE_CHECKS = {"cpus": "CPUs", "memory_mb": "memory", "disk_gb": "disk size", "disk_free_gb": "disk free"}
REQUIRED_UNITS = {"cpus": "CPUs", "memory_mb": "MB", "disk_gb": "GB", "disk_free_gb": "GB free"}
# Kubernetes names a node after its hostname, which must be a lowercase DNS subdomain (RFC 1123).
NODE_NAME = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def finding(check: str, status: str, found: str, needed: str = "", fix: str = "") -> dict:
    return {"check": check, "status": status, "found": found, "needed": needed, "fix": fix}


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# Inputs --------------------------------------------------------------------------------------------


def bad_requirements(requirements: dict) -> list[str]:
    """preflight_requirements: each group maps known measures to numbers of 0 or more."""
    bad = []
    for group, entry in (requirements or {}).items():
        if not isinstance(entry, dict):
            bad.append(f"{group} is not a mapping")
            continue
        for key, value in entry.items():
            if key not in MEASURES:
                bad.append(f"{group}.{key} is not a known measure")
            elif not _is_number(value) or value < 0:
                bad.append(f"{group}.{key}={value} is not a number of 0 or more")
    return bad


def bad_ports(ports: dict) -> list[str]:
    """preflight_ports: each group maps to a list of TCP ports."""
    bad = []
    for group, listed in (ports or {}).items():
        if not isinstance(listed, list):
            bad.append(f"{group} is not a list")
            continue
        bad += [
            f"{group}: {port} is not a TCP port"
            for port in listed
            if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535
        ]
    return bad


def is_ip(text: str) -> bool:
    """An IPv4 or IPv6 address."""
    try:
        ipaddress.ip_address(str(text))
    except ValueError:
        return False
    return True


# The machine ---------------------------------------------------------------------------------------


def required(requirements: dict, group_names: list[str]) -> dict:
    """For each measure, the largest value the node's groups ask, and the groups that ask it:
    {measure: {value, group}} (value 0 and group '' where none asks)."""
    result = {}
    for measure in MEASURES:
        values = {
            group: (requirements[group] or {}).get(measure, 0)
            for group in sorted(requirements or {})
            if group in group_names
        }
        largest = max(values.values()) if values else 0
        asking = [group for group, value in values.items() if value == largest] if largest > 0 else []
        result[measure] = {"value": largest, "group": ", ".join(asking)}
    return result


def os_finding(facts: dict, supported: dict) -> dict:
    """The release: distribution and version (or major version) among preflight_supported_systems."""
    versions = [str(v) for v in supported.get(facts.get("distribution"), [])]
    release = {str(facts.get("distribution_version")), str(facts.get("distribution_major_version"))}
    text = ", ".join(f"{name} {'/'.join(str(v) for v in listed)}" for name, listed in supported.items())
    return finding(
        "operating system",
        "PASS" if release & set(versions) else "PROBLEM",
        f"{facts.get('distribution')} {facts.get('distribution_version')}",
        text,
        "reinstall the machine with a supported release",
    )


def measure_finding(measure: str, value, need: dict, context: dict) -> dict:
    """One measure (cpus, memory_mb, disk_gb, disk_free_gb) against the largest requirement NEED of the
    node's groups. CONTEXT: disk_path, disk_mount, disk_error (why the disk could not be measured),
    group_names."""
    path, mount = context.get("disk_path", "/var"), context.get("disk_mount", "")
    units = {
        "cpus": "logical CPUs",
        "memory_mb": "MB (MemTotal)",
        "disk_gb": f"GB, the size of {mount}, the filesystem holding {path}",
        "disk_free_gb": f"GB free in {mount}",
    }
    fixes = {
        "cpus": "more CPUs, or a group that needs fewer",
        "memory_mb": "more memory, or a group that needs less",
        "disk_gb": f"give {path} a larger filesystem",
        "disk_free_gb": f"free space in {mount} (old images, logs), or enlarge it",
    }
    ok = value is not None and value >= need["value"]
    found = (
        f"cannot measure {path}: {context.get('disk_error')}"
        if value is None
        else f"{value} {units[measure]}"
    )
    if need["group"]:
        needed = f"at least {need['value']} {REQUIRED_UNITS[measure]} ({need['group']})"
    else:
        needed = f"no requirement for groups {', '.join(context.get('group_names') or [])}"
    return finding(
        MEASURE_CHECKS[measure], "PASS" if ok else "PROBLEM", found, needed, "" if ok else fixes[measure]
    )


# Identity ------------------------------------------------------------------------------------------


def identity_findings(identity: dict, others: dict, check_product_uuid: bool = True) -> list[dict]:
    """This node's hostname, MAC addresses and product_uuid against OTHERS ({host: identity}) of the play:
    each must be its own (kubeadm refuses twins), and the hostname valid as a node name."""
    twins: dict[str, list[str]] = {"hostname": [], "macs": [], "product_uuid": []}
    uuid = identity.get("product_uuid", "")
    for host, other in sorted((others or {}).items()):
        other = other or {}
        if other.get("hostname", "") == identity["hostname"]:
            twins["hostname"].append(host)
        if set(other.get("macs") or []) & set(identity.get("macs") or []):
            twins["macs"].append(host)
        if uuid not in ("", "na") and other.get("product_uuid", "") == uuid:
            twins["product_uuid"].append(host)

    valid = bool(NODE_NAME.match(identity["hostname"]))
    hostname = finding(
        "hostname",
        "PASS" if valid and not twins["hostname"] else "PROBLEM",
        identity["hostname"]
        + (f", also the hostname of {', '.join(twins['hostname'])}" if twins["hostname"] else "")
        + ("" if valid else ", not a valid Kubernetes node name"),
        "a hostname of its own, valid as a Kubernetes node name (lowercase letters, digits, '-', '.')",
        "hostnamectl set-hostname NAME",
    )
    macs = finding(
        "MAC addresses",
        "PROBLEM" if twins["macs"] else "PASS",
        (", ".join(identity.get("macs") or []) or "none")
        + (f", also on {', '.join(twins['macs'])}" if twins["macs"] else ""),
        "MAC addresses of its own (cloned virtual machines share them)",
        "give the network adapters of cloned machines new MAC addresses",
    )
    unknown = uuid in ("", "na")
    if not check_product_uuid:
        status, found = "SKIP", "not checked (preflight_check_product_uuid is false)"
    elif unknown:
        status = "NOTE"
        found = "none: /sys/class/dmi/id/product_uuid cannot be read, so this node cannot be told apart by it"
    else:
        status = "PROBLEM" if twins["product_uuid"] else "PASS"
        found = uuid + (f", also on {', '.join(twins['product_uuid'])}" if twins["product_uuid"] else "")
    product_uuid = finding(
        "product_uuid",
        status,
        found,
        "a product_uuid of its own (cloned virtual machines share it; kubeadm asks for unique ones)",
        "give each virtual machine its own SMBIOS UUID (its hypervisor sets it)"
        if status == "PROBLEM"
        else "",
    )
    return [hostname, macs, product_uuid]


# Swap, ports, clock --------------------------------------------------------------------------------


def swap_finding(swaps: dict, will_be_disabled: bool) -> dict:
    """SWAPS: node_probe's {areas, error}. Swap must be off before kubelet starts; role prereqs turns it
    off when prereqs_swap_disable is true (WILL_BE_DISABLED), so it is then only a note."""
    areas, error = swaps.get("areas") or [], swaps.get("error") or ""
    if error:
        status, found = "PROBLEM", f"cannot read /proc/swaps: {error}"
    elif not areas:
        status, found = "PASS", "swap off"
    else:
        status, found = ("NOTE" if will_be_disabled else "PROBLEM"), f"swap on: {', '.join(areas)}"
    if will_be_disabled:
        needed = "swap off before kubelet starts: role prereqs turns it off for good"
        needed += " (prereqs_swap_disable is true)"
        fix = ""
    else:
        needed = "swap off: kubelet will not start, and prereqs_swap_disable is false for this node"
        fix = "set prereqs_swap_disable: true, or swapoff -a and remove swap from /etc/fstab"
    return finding("swap", status, found, needed, fix)


def ports_finding(listening: dict, needed_ports: list[int], port_groups: list[str], context: dict) -> dict:
    """LISTENING: node_probe's {ports: [{port, name}], error}. The ports kubeadm needs must be free, but
    on a cluster member (CONTEXT member), whose own components hold them. CONTEXT: member, group_names."""
    busy = sorted(
        (entry for entry in listening.get("ports") or [] if entry.get("port") in needed_ports),
        key=lambda entry: entry["port"],
    )
    busy_text = ", ".join(dict.fromkeys(f"{entry['port']} ({entry.get('name') or '?'})" for entry in busy))
    error = listening.get("error") or ""
    if context.get("member"):
        status = "SKIP"
        found = "not checked: already a cluster member (/etc/kubernetes/kubelet.conf),"
        found += " its own components hold them"
    elif not needed_ports:
        status, found = "SKIP", f"no port to check for groups {', '.join(context.get('group_names') or [])}"
    elif error:
        status, found = "PROBLEM", f"cannot list the listening ports: {error}"
    elif busy:
        status, found = "PROBLEM", f"in use: {busy_text}"
    else:
        status, found = "PASS", f"free: {', '.join(str(port) for port in needed_ports)}"
    fix = ""
    if status == "PROBLEM":
        fix = (
            "stop what listens there (ss -tlnp); kubeadm reset cleans up a former Kubernetes"
            if busy
            else ("look at /proc/net/tcp")
        )
    return finding(
        "ports",
        status,
        found,
        f"TCP {', '.join(str(port) for port in needed_ports)} free for kubeadm ({', '.join(port_groups)})",
        fix,
    )


def clock_finding(clock: dict, max_seconds: float) -> dict:
    """CLOCK: action clock_skew's result {offset, uncertainty, within} (or a failure with msg)."""
    read = "offset" in clock
    if not read:
        found = f"cannot read the clock: {clock.get('msg', '')}"
    else:
        # Printed to a tenth of a second: an offset that rounds to 0.0 has no side (a run and its --check
        # report the same line).
        offset = round(clock["offset"], 1)
        side = (
            f"{abs(offset):.1f} s ahead of"
            if offset > 0
            else f"{-offset:.1f} s behind"
            if offset
            else "in step with"
        )
        found = f"{side} the controller (within {clock['uncertainty']:.1f} s)"
    ok = read and clock.get("within")
    return finding(
        "clock",
        "PASS" if ok else "PROBLEM",
        found,
        f"within {max_seconds} s of the controller's clock (preflight_max_clock_skew_seconds)",
        ""
        if ok
        else "synchronise it with the NTP servers of the site (prereqs_ntp_servers; chronyc makestep or "
        "timedatectl), then run again",
    )


# The container runtime -----------------------------------------------------------------------------


def cgroup_driver_finding(docker: dict, docker_running: bool, member: bool) -> dict:
    """DOCKER: node_probe's {driver, error}. kubelet uses the systemd cgroup driver; role docker switches
    docker to it, but a member's kubelet already runs with docker's driver."""
    driver = docker.get("driver") or ""
    if not docker_running or driver == "systemd":
        status = "PASS"
    elif not driver or member:
        status = "PROBLEM"
    else:
        status = "NOTE"
    if not docker_running:
        found = "docker does not run here"
    elif not driver:
        found = f"docker runs, but docker info fails: {docker.get('error') or ''}"
    else:
        found = f"docker uses the {driver} cgroup driver"
    if not docker_running or driver == "systemd":
        fix = ""
    elif not driver:
        fix = "look at journalctl -u docker"
    elif member:
        fix = (
            "its kubelet runs with this driver: drain the node, kubeadm reset, then site.yml switches docker"
            " and joins it again"
        )
    else:
        fix = "role docker switches it, restarting docker and its containers"
    return finding("docker cgroup driver", status, found, "the systemd cgroup driver (kubelet's)", fix)


def kubelet_runtime_finding(flags: dict, runtime: str, member: bool) -> dict:
    """FLAGS: node_probe's read of /var/lib/kubelet/kubeadm-flags.env {content, error}; a member's
    kubelet must use RUNTIME (appliance_container_runtime)."""
    content = flags.get("content")
    used = (
        "containerd"
        if "--container-runtime=remote" in (content or "") and "containerd.sock" in (content or "")
        else "docker"
    )
    if not member:
        status, found = "SKIP", "not a cluster member yet"
    elif content is None:
        status, found = (
            "PROBLEM",
            f"cannot read /var/lib/kubelet/kubeadm-flags.env: {flags.get('error') or ''}",
        )
    else:
        status, found = ("PASS" if used == runtime else "PROBLEM"), f"kubelet uses {used}"
    fix = ""
    if member and content is not None and used != runtime:
        fix = (
            f"set appliance_container_runtime: {used}, or move the member: drain it, kubeadm reset and"
            " join it again"
        )
    return finding("kubelet runtime", status, found, f"{runtime} (appliance_container_runtime)", fix)


def other_runtimes_finding(units: dict, other_services: list[str], runtime: str) -> dict:
    """UNITS: systemctl is-active's state of docker.service and OTHER_SERVICES. kubeadm stops when it finds
    several runtimes; docker running beside containerd is a note (kubelet uses containerd)."""
    asked = ["docker.service", *other_services]
    answered = all(units.get(unit) for unit in asked)
    running = [unit for unit in other_services if units.get(unit) == "active"]
    docker_too = runtime == "containerd" and units.get("docker.service") == "active"
    if not answered:
        status, found = "PROBLEM", f"systemctl is-active gave no state for some of {', '.join(asked)}"
    elif running:
        status, found = "PROBLEM", f"running: {', '.join(running)}"
    elif docker_too:
        status, found = "NOTE", "docker runs too; kubelet will use containerd"
    else:
        status, found = "PASS", "none running"
    return finding(
        "other runtimes",
        status,
        found,
        f"no runtime but {runtime} (kubeadm stops when it finds several)",
        f"systemctl disable --now {' '.join(running)}, or remove it" if running else "",
    )


# Run:ai's name, NFS server, GPUs ------------------------------------------------------------------


def dns_finding(lookup: dict, domain: str, external_ip: str, where: str) -> dict:
    """LOOKUP: `getent ahosts DOMAIN` run on WHERE (skipped when the domain or the address is not set);
    the name must resolve to EXTERNAL_IP there."""
    wanted = bool(domain) and bool(external_ip)
    addresses = list(
        dict.fromkeys(line.split()[0] for line in lookup.get("stdout_lines") or [] if line.split())
    )
    if not wanted:
        status, found = "SKIP", "not checked (runai_domain or runai_external_ip is not set)"
    elif not addresses:
        status, found = "PROBLEM", f"{domain} does not resolve on {where}"
    else:
        status = "PASS" if external_ip in addresses else "PROBLEM"
        found = f"{domain} resolves to {', '.join(addresses)} on {where}"
    return finding(
        "runai_domain",
        status,
        found,
        f"resolving to {external_ip} (runai_external_ip)",
        "add a DNS A record (or an /etc/hosts line) for it" if status == "PROBLEM" else "",
    )


def nfs_finding(connection: dict, server: str, port: int, timeout) -> dict:
    """CONNECTION: wait_for's result on SERVER:PORT (state started when it connected)."""
    target = f"{server}:{port}"
    answered = connection.get("state") == "started"
    if not server:
        status, found = "SKIP", "not checked (runai_nfs_server is not set)"
    elif answered:
        status, found = "PASS", f"{target} answers"
    else:
        status, found = "PROBLEM", f"no answer on TCP {target} within {timeout} s"
    return finding(
        "NFS server",
        status,
        found,
        f"an answer on TCP {port} (NFSv4) from every node",
        f"start the NFS server, or open TCP {port} to it from the nodes" if status == "PROBLEM" else "",
    )


def gpus_finding(smi: dict, expected: int = 0) -> dict:
    """SMI: `nvidia-smi -L` as node_probe ran it {rc, stdout_lines, stderr}; rc 127, no nvidia-smi, skips
    (the GPU operator installs the driver later). EXPECTED: preflight_gpus_expected, 0 for at least one."""
    rc = smi.get("rc")
    lines = smi.get("stdout_lines") or []
    gpus = [line for line in lines if re.match(r"GPU [0-9]+:", line)]
    expected = int(expected or 0)
    ok = rc == 0 and (len(gpus) == expected if expected > 0 else len(gpus) > 0)
    if rc == 127:
        status, found = "SKIP", "not checked: no nvidia-smi (the GPU operator installs the driver)"
    elif rc == 0:
        status = "PASS" if ok else "PROBLEM"
        found = f"{len(gpus)} GPUs: " + "; ".join(re.sub(r" [(]UUID.*$", "", gpu) for gpu in gpus)
    else:
        status = "PROBLEM"
        found = f"nvidia-smi -L fails: {(' '.join(lines) + ' ' + (smi.get('stderr') or '')).strip()}"
    return finding(
        "GPUs",
        status,
        found,
        f"{expected} GPUs (preflight_gpus_expected)"
        if expected > 0
        else "at least one GPU, as a gpu_workers node",
        ""
        if status != "PROBLEM"
        else "check that the GPUs are seated and the driver loads (dmesg | grep -i nvrm), or put the node in "
        "cpu_workers",
    )


# The Run:ai certificate ----------------------------------------------------------------------------


def _asn1_time(text: str) -> str:
    try:
        return str(datetime.datetime.strptime(text, "%Y%m%d%H%M%SZ"))
    except (TypeError, ValueError):
        return str(text)


def tls_findings(inputs: dict, cert: dict, chain: dict, key: dict) -> list[dict]:
    """The Run:ai certificate from what community.crypto read on the controller: CERT
    (x509_certificate_info with valid_at now/soon), CHAIN (certificate_complete_chain to the CA), KEY
    (openssl_privatekey_info); each is a registered result, skipped when its input is not set.
    INPUTS: cert_file, key_file, ca_file, domain, min_valid_days."""
    cert, chain, key = cert or {}, chain or {}, key or {}
    cert_file = inputs.get("cert_file") or ""
    if not cert_file:
        return [finding("TLS certificate", "SKIP", "not checked (runai_tls_cert_file is not set)")]
    if "public_key" not in cert:
        return [
            finding(
                "TLS certificate",
                "PROBLEM",
                f"cannot read {cert_file}: {cert.get('msg', '')}",
                "a PEM certificate (followed by its intermediate CAs, if any) for runai_domain",
                "point runai_tls_cert_file at the certificate, in PEM, on the controller",
            )
        ]

    # The name: the domain, or a wildcard for it, among the DNS names of subjectAltName.
    names = [n[4:].lower() for n in cert.get("subject_alt_name") or [] if n.startswith("DNS:")]
    domain = (inputs.get("domain") or "").lower()
    name_ok = domain in names or ("*." + domain.split(".", 1)[-1]) in names
    name = finding(
        "TLS name",
        "SKIP" if not domain else "PASS" if name_ok else "PROBLEM",
        "not checked (runai_domain is not set)"
        if not domain
        else f"{cert_file} is for {', '.join(names) or 'no DNS name (no subjectAltName)'}",
        f"{domain} (runai_domain) or a wildcard for it in its subjectAltName",
        "" if not domain or name_ok else "issue a certificate for runai_domain",
    )

    valid_at = cert.get("valid_at") or {}
    validity = finding(
        "TLS validity",
        "PROBLEM" if not valid_at.get("now") else "NOTE" if not valid_at.get("soon") else "PASS",
        f"valid from {_asn1_time(cert.get('not_before'))} to {_asn1_time(cert.get('not_after'))} (UTC)",
        f"valid now and for {inputs.get('min_valid_days')} days more (preflight_tls_min_valid_days)",
        "renew the certificate" if not valid_at.get("soon") else "",
    )

    ca_file = inputs.get("ca_file") or ""
    message = chain.get("msg", "")
    if not ca_file:
        ca_status, ca_found = "SKIP", "not checked (runai_ca_cert_file is not set)"
    elif "root" in chain:
        ca_status, ca_found = "PASS", f"signed by the CA of {ca_file}"
    elif message.startswith("Cannot complete chain"):  # certificate_complete_chain: no signature leads there
        ca_status, ca_found = "PROBLEM", f"not signed by the CA of {ca_file}"
    else:
        ca_status, ca_found = "PROBLEM", f"cannot check the chain: {message}"
    ca = finding(
        "TLS CA",
        ca_status,
        ca_found,
        "signed by that CA (runai_ca_cert_file), directly or through intermediates in the certificate file",
        "issue it from that CA, add its intermediates, or set runai_ca_cert_file to its CA"
        if ca_status == "PROBLEM"
        else "",
    )

    key_file = inputs.get("key_file") or ""
    key_print = (key.get("public_key_fingerprints") or {}).get("sha256", "key")
    cert_print = (cert.get("public_key_fingerprints") or {}).get("sha256", "certificate")
    if not key_file:
        key_status, key_found = "SKIP", "not checked (runai_tls_key_file is not set)"
    elif key_print == cert_print:
        key_status, key_found = "PASS", f"{key_file} is the key of the certificate"
    elif "public_key_fingerprints" not in key:
        key_status, key_found = "PROBLEM", f"cannot read {key_file}: {key.get('msg', '')}"
    else:
        key_status, key_found = "PROBLEM", f"{key_file} is not the key of the certificate"
    key_finding = finding(
        "TLS key",
        key_status,
        key_found,
        "the certificate's private key, unencrypted PEM",
        "set runai_tls_key_file to the key of the certificate" if key_status == "PROBLEM" else "",
    )
    return [name, validity, ca, key_finding]


# The report ----------------------------------------------------------------------------------------


def failure_message(problems: list[dict], verdict: str, report: str) -> str:
    """The one failure: the verdict, then each problem once, naming every host that has it."""
    lines: list[tuple[str, list[str]]] = []
    for problem in problems:
        line = f": {problem['check']}: {problem['found']}; needed: {problem['needed']}"
        if problem.get("fix"):
            line += f"; fix: {problem['fix']}"
        same = [entry for entry in lines if entry[0] == line]
        if same:
            same[0][1].append(problem["host"])
        else:
            lines.append((line, [problem["host"]]))
    return "\n".join(
        [
            f"Preflight found {verdict}. Report: {report}",
            *(f"- {', '.join(hosts)}{line}" for line, hosts in lines),
        ]
    )


class FilterModule:
    def filters(self):
        return {
            "preflight_bad_requirements": bad_requirements,
            "preflight_bad_ports": bad_ports,
            "preflight_is_ip": is_ip,
            "preflight_required": required,
            "preflight_os": os_finding,
            "preflight_measure": measure_finding,
            "preflight_identity": identity_findings,
            "preflight_swap": swap_finding,
            "preflight_ports": ports_finding,
            "preflight_clock": clock_finding,
            "preflight_cgroup_driver": cgroup_driver_finding,
            "preflight_kubelet_runtime": kubelet_runtime_finding,
            "preflight_other_runtimes": other_runtimes_finding,
            "preflight_dns": dns_finding,
            "preflight_nfs": nfs_finding,
            "preflight_gpus": gpus_finding,
            "preflight_tls": tls_findings,
            "preflight_failure_message": failure_message,
        }
