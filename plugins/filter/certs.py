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
    (C(certificates), C(last_renewal)).
  - Returns C(certificates) (every certificate with its C(node) and C(expiring)), C(expiring) (one
    description per certificate within O(warn_days) days), C(renewals) (each node's last renewal) and
    C(lines) (a table and the renewals, for the operator).
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


def _renewal_line(node: str, renewal: dict[str, Any]) -> str:
    when = str(renewal.get("time", "?"))[:19].replace("T", " ")
    if renewal.get("error"):
        return f"{node}: last renewal {when} UTC FAILED: {renewal['error']}"
    if renewal.get("renewed"):
        restarted = ", ".join(renewal.get("restarted") or []) or "nothing"
        return (
            f"{node}: last renewal {when} UTC renewed {len(renewal['renewed'])} certificate(s), "
            f"restarted {restarted}"
        )
    return f"{node}: last renewal check {when} UTC: nothing was due within {renewal.get('before_days')} days"


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
    for node in sorted(nodes, key=lambda name: (name == "controller", name)):
        document = nodes[node]
        if not isinstance(document, dict) or not isinstance(document.get("certificates"), list):
            raise AnsibleFilterError(f"certs_report: {node}: not a document of appliance-certs status")
        for certificate in document["certificates"]:
            certificates.append({"node": node, **certificate, "expiring": certificate["days_left"] <= warn})
        if document.get("last_renewal"):
            renewals[node] = document["last_renewal"]
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
    lines += [_renewal_line(node, renewal) for node, renewal in renewals.items()]
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
