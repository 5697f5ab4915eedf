#!/usr/bin/python
"""Ansible module node_status: every node's readiness, roles, taints, cordon and pods, read-only."""

from __future__ import annotations

DOCUMENTATION = r"""
module: node_status
short_description: Read every Kubernetes node's readiness, roles, taints, cordon state and pod counts
description:
  - Reads the nodes and pods with C(kubectl) on the host, a control-plane node, and changes nothing.
  - A node is C(drained) when it carries Run:ai's maintenance taint C(runai=drain:NoExecute).
attributes:
  check_mode:
    support: full
    description: It only reads, so it runs in check mode as in any other run.
  diff_mode:
    support: none
    description: Returns no diff.
author:
  - Appliance toolkit maintainers (@appliance-maintainers)
extends_documentation_fragment:
  - appliance.runai.kubeconfig
"""

EXAMPLES = r"""
- name: Read every node
  appliance.runai.node_status:
  register: nodes
"""

RETURN = r"""
nodes:
  description: One entry per node, by name.
  returned: always
  type: list
  elements: dict
  contains:
    name: {description: Node name., type: str}
    ready: {description: "The Ready condition: True, False or Unknown.", type: str}
    roles: {description: Roles from the node-role.kubernetes.io labels., type: list}
    taints: {description: Taints as key=value:effect., type: list}
    cordoned: {description: Whether the node is unschedulable., type: bool}
    drained: {description: Whether it carries runai=drain:NoExecute., type: bool}
    pods: {description: Pods bound to the node and not finished., type: int}
    workload_pods:
      description: Of those, the ones a drain moves (not DaemonSet or static pods).
      type: int
    version: {description: The kubelet's version., type: str}
table:
  description: The same as text lines, for the operator.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.appliance.runai.plugins.module_utils.appliance_nodes import (
    DRAIN_TAINT,
    Kubectl,
    KubectlError,
    has_taint,
    is_finished,
    ready,
    roles,
    workload_pods,
)


def taint_text(taint: dict) -> str:
    value = taint.get("value") or ""
    return f"{taint['key']}={value}:{taint['effect']}" if value else f"{taint['key']}:{taint['effect']}"


def summarise(nodes: list[dict], pods: list[dict]) -> list[dict]:
    by_node: dict[str, list[dict]] = {}
    for pod in pods:
        if pod["spec"].get("nodeName") and not is_finished(pod):
            by_node.setdefault(pod["spec"]["nodeName"], []).append(pod)
    summary = []
    for node in sorted(nodes, key=lambda n: n["metadata"]["name"]):
        name = node["metadata"]["name"]
        on_node = by_node.get(name, [])
        summary.append(
            {
                "name": name,
                "ready": ready(node),
                "roles": roles(node),
                "taints": [taint_text(t) for t in node["spec"].get("taints") or []],
                "cordoned": bool(node["spec"].get("unschedulable")),
                "drained": has_taint(node, DRAIN_TAINT),
                "pods": len(on_node),
                "workload_pods": len(workload_pods(on_node)),
                "version": node.get("status", {}).get("nodeInfo", {}).get("kubeletVersion", ""),
            }
        )
    return summary


def table(summary: list[dict]) -> list[str]:
    header = ["NODE", "READY", "STATE", "PODS", "ROLES", "TAINTS"]
    rows = [header]
    for node in summary:
        state = "drained" if node["drained"] else "cordoned" if node["cordoned"] else "in service"
        if node["drained"] and node["cordoned"]:
            state = "drained,cordoned"
        rows.append(
            [
                node["name"],
                node["ready"],
                state,
                f"{node['pods']} ({node['workload_pods']} workload)",
                ",".join(node["roles"]) or "-",
                ",".join(node["taints"]) or "-",
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    return [
        "  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[-1]]).rstrip()
        for row in rows
    ]


def main() -> None:
    module = AnsibleModule(
        argument_spec={"kubeconfig": {"type": "path", "default": "/etc/kubernetes/admin.conf"}},
        supports_check_mode=True,
    )
    kubectl = Kubectl(module, module.params["kubeconfig"])
    try:
        summary = summarise(kubectl.nodes(), kubectl.pods())
    except KubectlError as error:
        module.fail_json(msg=str(error))
    module.exit_json(changed=False, nodes=summary, table=table(summary))


if __name__ == "__main__":
    main()
