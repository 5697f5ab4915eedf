#!/usr/bin/python
"""Ansible module node_metadata: a Kubernetes node's labels and taints, through kubectl."""

from __future__ import annotations

DOCUMENTATION = r"""
module: node_metadata
short_description: Set the labels and taints of a Kubernetes node
description:
  - Reads the node with C(kubectl get node -o json) and changes only what differs from what is asked,
    that is labels set to a value, labels removed (value C(null)) and taints present. Labels and taints
    not named stay as they are (other tools and admins set their own).
  - Runs C(kubectl) on the host, a control-plane node, so no Python Kubernetes client is needed there
    (an air-gapped node could not install one).
options:
  node:
    description: Name of the node, as C(kubectl get nodes) shows it.
    type: str
    required: true
  labels:
    description: Labels to set (a string value) or to remove (C(null)).
    type: dict
    default: {}
  taints:
    description: Taints the node must carry; one with the same key and effect but another value is replaced.
    type: list
    elements: dict
    default: []
    suboptions:
      key:
        description: The taint's key.
        type: str
        required: true
      value:
        description: The taint's value.
        type: str
        default: ""
      effect:
        description: The taint's effect.
        type: str
        required: true
        choices: [NoSchedule, PreferNoSchedule, NoExecute]
attributes:
  check_mode:
    support: full
    description: Reports what it would change and changes nothing.
  diff_mode:
    support: full
    description: Returns a diff of what changed.
author:
  - Appliance toolkit maintainers (@appliance-maintainers)
extends_documentation_fragment:
  - appliance.runai.kubeconfig
"""

EXAMPLES = r"""
- name: Make gpu-1 a Run:ai GPU worker with a taint of its own
  appliance.runai.node_metadata:
    node: gpu-1
    labels:
      node-role.kubernetes.io/runai-gpu-worker: "true"
      node-role.kubernetes.io/runai-cpu-worker: null
    taints:
      - key: dedicated
        value: training
        effect: NoSchedule
"""

RETURN = r"""
labels:
  description: The node's labels after the change.
  returned: always
  type: dict
taints:
  description: The node's taints after the change.
  returned: always
  type: list
"""

import json

from ansible.module_utils.basic import AnsibleModule

ARGUMENT_SPEC = {
    "node": {"type": "str", "required": True},
    "labels": {"type": "dict", "default": {}},
    "taints": {
        "type": "list",
        "elements": "dict",
        "default": [],
        "options": {
            "key": {"type": "str", "required": True, "no_log": False},
            "value": {"type": "str", "default": ""},
            "effect": {
                "type": "str",
                "required": True,
                "choices": ["NoSchedule", "PreferNoSchedule", "NoExecute"],
            },
        },
    },
    "kubeconfig": {"type": "path", "default": "/etc/kubernetes/admin.conf"},
}


def label_arguments(current: dict[str, str], wanted: dict[str, str | None]) -> list[str]:
    """`kubectl label` arguments that turn CURRENT into WANTED: key=value to set, key- to remove."""
    changes = []
    for key, value in sorted(wanted.items()):
        if value is None:
            if key in current:
                changes.append(f"{key}-")
        elif current.get(key) != str(value):
            changes.append(f"{key}={value}")
    return changes


def taint_arguments(current: list[dict], wanted: list[dict]) -> list[str]:
    """`kubectl taint --overwrite` arguments for each wanted taint the node lacks (key=value:effect)."""
    changes = []
    for taint in wanted:
        value = taint.get("value") or ""
        present = any(
            t.get("key") == taint["key"]
            and t.get("effect") == taint["effect"]
            and (t.get("value") or "") == value
            for t in current
        )
        if not present:
            changes.append(
                f"{taint['key']}={value}:{taint['effect']}" if value else f"{taint['key']}:{taint['effect']}"
            )
    return changes


def apply_labels(current: dict[str, str], changes: list[str]) -> dict[str, str]:
    after = dict(current)
    for change in changes:
        if change.endswith("-"):
            after.pop(change[:-1], None)
        else:
            key, _sep, value = change.partition("=")
            after[key] = value
    return after


def apply_taints(current: list[dict], wanted: list[dict]) -> list[dict]:
    after = list(current)
    for taint in wanted:
        value = taint.get("value") or ""
        after = [
            t for t in after if not (t.get("key") == taint["key"] and t.get("effect") == taint["effect"])
        ]
        entry = {"key": taint["key"], "effect": taint["effect"]}
        if value:
            entry["value"] = value
        after.append(entry)
    return after


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    node = module.params["node"]
    kubectl = [module.get_bin_path("kubectl", required=True), "--kubeconfig", module.params["kubeconfig"]]

    rc, out, err = module.run_command([*kubectl, "get", "node", node, "-o", "json"])
    if rc != 0:
        module.fail_json(msg=f"cannot read node {node}: {err.strip() or out.strip()}")
    found = json.loads(out)
    labels = found["metadata"].get("labels") or {}
    taints = found["spec"].get("taints") or []

    label_changes = label_arguments(labels, module.params["labels"])
    taint_changes = taint_arguments(taints, module.params["taints"])
    after_labels = apply_labels(labels, label_changes)
    after_taints = apply_taints(taints, module.params["taints"]) if taint_changes else taints
    changed = bool(label_changes or taint_changes)
    result = {
        "changed": changed,
        "labels": after_labels,
        "taints": after_taints,
        "diff": {
            "before": {"labels": labels, "taints": taints},
            "after": {"labels": after_labels, "taints": after_taints},
        },
    }
    if changed and not module.check_mode:
        if label_changes:
            rc, out, err = module.run_command(
                [*kubectl, "label", "node", node, "--overwrite", *label_changes]
            )
            if rc != 0:
                module.fail_json(msg=f"cannot label node {node}: {err.strip()}", **result)
        if taint_changes:
            rc, out, err = module.run_command(
                [*kubectl, "taint", "node", node, "--overwrite", *taint_changes]
            )
            if rc != 0:
                module.fail_json(msg=f"cannot taint node {node}: {err.strip()}", **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
