"""Filter certs_report: the verdict of `appliance certs status` on what each node's appliance-certs read.

Role certs runs `appliance-certs status` (roles/certs/files/appliance_certs.py) on every node, and on the
controller for the Run:ai control plane's certificates; this filter joins their answers into one list,
names the certificates that expire within the warning's days, and lays out the lines the CLI prints.
"""

from __future__ import annotations

from typing import Any

from ansible.errors import AnsibleFilterError

DOCUMENTATION = r"""
name: certs_report
short_description: Join every node's certificates, name those that expire soon, and lay out a table
description:
  - Input - a mapping node -> the JSON document of C(appliance-certs status) on it
    (C(certificates), C(last_renewal), C(last_check)).
  - Returns C(certificates) (every certificate with its C(node) and C(expiring)), C(expiring) (one
    description per certificate within O(warn_days) days), C(renewals) (each node's last renewal) and
    C(lines) (a table and the renewals, for the operator).
  - C(renewals) - node -> {C(last_renewal), C(last_check)}, as C(appliance-certs) recorded them.
positional: _input, warn_days
options:
  _input:
    description: Node name -> C(appliance-certs status)'s document.
    type: dict
    required: true
  warn_days:
    description: Certificates with this many days left or fewer are expiring.
    type: float
    required: true
"""

KIND_NOTE = {
    "kubeadm": "kubeadm",
    "ca": "CA",
    "kubelet": "kubelet",
    "appliance": "toolkit",
    "operator": "operator",
}


def _when(result: dict[str, Any]) -> str:
    return str(result.get("time", "?"))[:19].replace("T", " ") + " UTC"


def _renewal_lines(node: str, document: dict[str, Any]) -> list[str]:
    """The node's last renewal (or failure), and its last check when that came later and renewed nothing."""
    lines = []
    renewal, check = document.get("last_renewal"), document.get("last_check")
    if renewal and renewal.get("error"):
        lines.append(f"{node}: last renewal {_when(renewal)} FAILED: {renewal['error']}")
    elif renewal:
        restarted = ", ".join(renewal.get("restarted") or []) or "nothing"
        count = len(renewal.get("renewed") or [])
        lines.append(
            f"{node}: last renewal {_when(renewal)} renewed {count} certificate(s), restarted {restarted}"
        )
    if check and (not renewal or check.get("time") != renewal.get("time")):
        lines.append(
            f"{node}: last check {_when(check)}: nothing was due within {check.get('before_days')} days"
        )
    return lines


def certs_report(nodes: dict[str, Any], warn_days: float) -> dict[str, Any]:
    if not isinstance(nodes, dict):
        raise AnsibleFilterError(
            f"certs_report: expected a mapping node -> document, got {type(nodes).__name__}"
        )
    try:
        warn = float(warn_days)
    except (TypeError, ValueError):
        raise AnsibleFilterError(f"certs_report: warn_days {warn_days!r} is not a number") from None
    certificates: list[dict[str, Any]] = []
    renewals: dict[str, Any] = {}
    renewal_lines: list[str] = []
    for node in sorted(nodes, key=lambda name: (name == "controller", name)):
        document = nodes[node]
        if not isinstance(document, dict) or not isinstance(document.get("certificates"), list):
            raise AnsibleFilterError(f"certs_report: {node}: not a document of appliance-certs status")
        for certificate in document["certificates"]:
            certificates.append({"node": node, **certificate, "expiring": certificate["days_left"] <= warn})
        if document.get("last_renewal") or document.get("last_check"):
            renewals[node] = {key: document.get(key) for key in ("last_renewal", "last_check")}
            renewal_lines += _renewal_lines(node, document)
    expiring = [
        f"{c['node']} {c['name']} ({c['days_left']:.0f} days left, {c['not_after'][:10]})"
        for c in certificates
        if c["expiring"]
    ]
    header = ("NODE", "CERTIFICATE", "KIND", "NOT AFTER (UTC)", "DAYS", "SUBJECT")
    rows = [
        (
            c["node"],
            c["name"],
            KIND_NOTE.get(c["kind"], c["kind"]),
            c["not_after"][:16].replace("T", " "),
            f"{c['days_left']:.0f}" + (" !" if c["expiring"] else ""),
            c["subject"],
        )
        for c in certificates
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    lines = [
        "  ".join(
            [*(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)), row[-1]]
        ).rstrip()
        for row in [header, *rows]
    ]
    lines += renewal_lines
    summary = f"{len(certificates)} certificates; "
    summary += (
        f"{len(expiring)} expire within {warn:g} days (marked !)"
        if expiring
        else f"none within {warn:g} days"
    )
    lines.append(summary)
    return {"certificates": certificates, "expiring": expiring, "renewals": renewals, "lines": lines}


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"certs_report": certs_report}
