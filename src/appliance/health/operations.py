"""Operator actions: the QA check on a GPU node; re-admission and the health status on the control plane.

`appliance health readmit|status` reach these through playbooks/maintenance/gpu_{readmit,status}.yml, which
run `appliance-gpu-health qa` on the node and `appliance-gpu-health readmit|status` on the first
control-plane node.
"""

from __future__ import annotations

import json
import shutil
import urllib.parse
from collections.abc import Callable
from typing import Any

from appliance.health import node as nodeapi
from appliance.health import remediation
from appliance.health.controller import STATUS_CONFIGMAP
from appliance.health.kube import Client, KubeError
from appliance.health.smi import Run, read, run_command


def qa(
    expected_gpus: int,
    run: Run = run_command,
    which: Callable[[str], str | None] = shutil.which,
) -> dict[str, Any]:
    """Re-admission's QA check, on the node: nvidia-smi answers and lists the expected GPUs (one at least)
    with nothing the agent would isolate for (appliance.health.smi: throttled clocks do not fail it);
    `dcgmi diag -r 1` passes where DCGM is installed. {"passed": bool, "summary" or "problem": text}."""
    smi = which("nvidia-smi")
    if smi is None:
        return {"passed": False, "problem": "nvidia-smi is not installed"}
    reading = read(smi, max(expected_gpus, 1), run)
    fatal = [finding for finding in reading.findings if finding.fatal]
    if fatal:
        return {"passed": False, "problem": "; ".join(f.message.partition(": ")[2] for f in fatal)}
    visible = len(reading.gpus)
    dcgmi = which("dcgmi")
    if dcgmi is not None:
        code, output = run([dcgmi, "diag", "-r", "1"], 600)
        failures = [line.strip() for line in output.splitlines() if "Fail" in line]
        if code != 0 or failures:
            return {
                "passed": False,
                "problem": f"dcgmi diag -r 1 exited {code}: {'; '.join(failures) or output}",
            }
    dcgm = "dcgmi diag -r 1 passed" if dcgmi else "no DCGM installed"
    return {
        "passed": True,
        "summary": f"nvidia-smi lists {visible} GPUs, none with a fault; {dcgm}",
    }


def readmit(client: Client, name: str, qa: str) -> dict[str, Any]:
    """Clear GPUHealthy (True, reason Readmitted, the QA result in the message) and then the fault taint.

    The condition goes first: the controller re-taints a node whose condition is still False, and leaves
    alone the taint of a node whose condition is True. Other taints and the cordon (spec.unschedulable) stay
    as they are: a cordon an admin set before is the admin's to lift."""
    for _attempt in range(5):
        item = nodeapi.get_node(client, name)
        fault = nodeapi.fault_of(item)
        taint = nodeapi.fault_taint(item)
        if fault is None and taint is None:
            return {"node": name, "changed": False, "cleared": None, "cordoned": _cordoned(item)}
        if fault is not None:
            nodeapi.set_condition(client, name, True, "Readmitted", f"QA passed: {qa}")
        if taint is not None:
            item = nodeapi.get_node(client, name)
            others = [
                t for t in item.get("spec", {}).get("taints") or [] if t.get("key") != nodeapi.TAINT_KEY
            ]
            try:
                nodeapi.set_taints(client, item, others, {})
            except KubeError as error:
                if error.status == 409:
                    continue  # the node changed since we read it: read it again
                raise
        cleared = fault.reason if fault else f"taint {taint['value']}" if taint else None
        nodeapi.record_event(
            client, item, "GPUReadmitted", f"re-admitted after QA ({qa}); was {cleared}", False
        )
        return {"node": name, "changed": True, "cleared": cleared, "cordoned": _cordoned(item)}
    raise KubeError(f"node {name} kept changing while it was re-admitted; try again")


def _cordoned(item: dict[str, Any]) -> bool:
    return bool(item.get("spec", {}).get("unschedulable"))


def status(client: Client, selector: str) -> dict[str, Any]:
    """Every GPU node with its condition, last fault, taint and cordon; the controller's breaker state."""
    query = urllib.parse.urlencode({"labelSelector": selector})
    nodes = client.get(f"/api/v1/nodes?{query}").get("items", [])
    rows = []
    for item in sorted(nodes, key=nodeapi.name_of):
        condition = nodeapi.condition(item) or {}
        taint = nodeapi.fault_taint(item)
        rows.append(
            {
                "node": nodeapi.name_of(item),
                "gpu_healthy": condition.get("status", "Unknown"),
                "reason": condition.get("reason", "no agent report"),
                "message": condition.get("message", ""),
                "since": condition.get("lastTransitionTime", ""),
                "heartbeat": condition.get("lastHeartbeatTime", ""),
                "taint": f"{taint['key']}={taint.get('value', '')}:{taint['effect']}" if taint else "",
                "cordoned": _cordoned(item),
                "isolated_at": item["metadata"].get("annotations", {}).get(nodeapi.ISOLATED_AT, ""),
                "remediation": _remediation(item),
            }
        )
    namespace, name = STATUS_CONFIGMAP
    try:
        configmap = client.get(f"/api/v1/namespaces/{namespace}/configmaps/{name}")
        controller = json.loads(configmap.get("data", {}).get("controller.json", "{}"))
    except KubeError as error:
        if error.status != 404:
            raise
        controller = {}
    for row in rows:
        row["deferred"] = row["node"] in controller.get("deferred", [])
    return {"nodes": rows, "controller": controller}


def _remediation(item: dict[str, Any]) -> str:
    record = remediation.view(item).record
    if record is None:
        return ""
    return record.step + (f" ({record.reason})" if record.reason else "")


def approve(client: Client, name: str) -> dict[str, Any]:
    """Let the controller remediate NAME's current fault (policy manual): the approval names the fault, so
    it does not carry over to a later one."""
    item = nodeapi.get_node(client, name)
    fault = nodeapi.fault_of(item)
    if fault is None:
        raise KubeError(f"{name} has no GPU fault to remediate (GPUHealthy is not False)")
    if nodeapi.fault_taint(item) is None:
        raise KubeError(
            f"{name} is not isolated (the circuit breaker deferred it, or a dry run): nothing to approve"
        )
    annotations = item["metadata"].get("annotations") or {}
    if annotations.get(remediation.APPROVED) == fault.since:
        return {"node": name, "changed": False, "fault": fault.reason}
    client.patch(
        f"/api/v1/nodes/{name}", {"metadata": {"annotations": {remediation.APPROVED: fault.since}}}, "merge"
    )
    nodeapi.record_event(
        client,
        item,
        "GPURemediationApproved",
        f"remediation of {fault.reason} approved by an operator",
        False,
    )
    return {"node": name, "changed": True, "fault": fault.reason}


def status_table(result: dict[str, Any]) -> list[str]:
    """status() as aligned lines: one per GPU node, its last fault's line under it, the breaker last."""
    header = ("NODE", "GPUHEALTHY", "REASON", "SINCE", "TAINT", "CORDONED", "REMEDIATION")
    rows = [
        (
            row["node"],
            row["gpu_healthy"] + (" (isolation deferred)" if row["deferred"] else ""),
            row["reason"],
            row["since"],
            row["taint"] or "-",
            "yes" if row["cordoned"] else "no",
            row.get("remediation") or "-",
        )
        for row in result["nodes"]
    ]
    widths = [max(len(str(cells[i])) for cells in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(header, widths, strict=True)).rstrip()]
    for cells, row in zip(rows, result["nodes"], strict=True):
        lines.append(
            "  ".join(str(cell).ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()
        )
        if row["gpu_healthy"] == "False" or row["reason"] == "Readmitted":
            lines.append(f"    {row['message']}")
    controller = result.get("controller") or {}
    if controller:
        mode = "DRY RUN, " if controller.get("dry_run") else ""
        lines.append(
            f"controller: {mode}effect {controller.get('effect')}; circuit breaker "
            f"{len(controller.get('counted', []))} of {controller.get('budget')} isolations used "
            f"(limit {controller.get('max_isolated_share', 0):.0%} of {len(controller.get('gpu_nodes', []))} "
            f"GPU nodes per {controller.get('window_seconds', 0):.0f} s); "
            f"remediation {controller.get('remediation', 'off')}"
        )
    else:
        lines.append("controller: no status yet (is appliance-gpu-health-controller running?)")
    if not result["nodes"]:
        lines.insert(1, "(no GPU nodes)")
    return lines
