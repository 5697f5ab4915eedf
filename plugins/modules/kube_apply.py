#!/usr/bin/python
"""Ansible module kube_apply: apply a manifest file with kubectl, only where the cluster differs."""

from __future__ import annotations

DOCUMENTATION = r"""
module: kube_apply
short_description: Apply a Kubernetes manifest file with kubectl when the cluster differs from it
description:
  - Compares the cluster with the manifest (C(kubectl diff), the API server's dry run of the apply) and runs
    C(kubectl apply) only when they differ, so a second run changes nothing.
  - In check mode it reports whether a run would apply, with the difference when C(--diff) is given, and
    applies nothing. Where the manifest or the cluster is not there yet (check mode on fresh nodes, where the
    template before it was not written, kubeadm has not run), it reports that a run would apply.
  - Runs on a node with kubectl and a kubeconfig (a control-plane node's admin.conf).
options:
  src:
    description: The manifest on the node (one or more YAML documents), as a template task wrote it.
    type: path
    required: true
  src_changed:
    description:
      - Whether the task that wrote O(src) changed it. In check mode that task wrote nothing, so the file is
        the previous one, and the module reports that a run would apply, without comparing.
    type: bool
    default: false
  missing_namespace_is_a_change:
    description:
      - Count a C(namespaces "..." not found) error of the comparison as a difference rather than a failure,
        for a manifest that creates its own namespace (before the first apply the API server cannot compare
        objects in a namespace that does not exist yet).
    type: bool
    default: false
  error_hint:
    description:
      - A sentence added to the failure when kubectl cannot compare or apply (what the operator should check).
    type: str
    default: ""
attributes:
  check_mode:
    support: full
    description: Compares and reports what a run would apply; applies nothing.
  diff_mode:
    support: full
    description: Returns C(kubectl diff)'s output as the difference.
author:
  - Appliance toolkit maintainers (@appliance-maintainers)
extends_documentation_fragment:
  - appliance.runai.kubeconfig
"""

EXAMPLES = r"""
- name: Write the manifest
  ansible.builtin.template:
    src: objects.yml.j2
    dest: /etc/appliance/objects.yml
    mode: "0644"

- name: Apply it where the cluster differs
  appliance.runai.kube_apply:
    src: /etc/appliance/objects.yml
"""

RETURN = r"""
applied:
  description: Whether kubectl apply ran (never in check mode).
  type: bool
  returned: always
difference:
  description: C(kubectl diff)'s output, empty when the cluster matches.
  type: str
  returned: always
stdout_lines:
  description: C(kubectl apply)'s output, one line per object.
  type: list
  elements: str
  returned: when applied
"""

import os
import re

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.appliance.runai.plugins.module_utils.appliance_nodes import Kubectl

MISSING_NAMESPACE = re.compile(r'namespaces? "[^"]+" not found')


def compare(kubectl: Kubectl, src: str, missing_namespace_is_a_change: bool) -> tuple[bool, str, str]:
    """(differs, difference, error): kubectl diff exits 0 when the cluster matches, 1 when it differs,
    more on errors."""
    rc, out, err = kubectl.run("diff", "-f", src)
    if rc == 0:
        return False, "", ""
    if rc == 1:
        return True, out, ""
    if missing_namespace_is_a_change and MISSING_NAMESPACE.search(err or ""):
        return True, (err or "").strip(), ""
    return False, "", (err or out).strip()


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "src": {"type": "path", "required": True},
            "src_changed": {"type": "bool", "default": False},
            "missing_namespace_is_a_change": {"type": "bool", "default": False},
            "error_hint": {"type": "str", "default": ""},
            "kubeconfig": {"type": "path", "default": "/etc/kubernetes/admin.conf"},
        },
        supports_check_mode=True,
    )
    src, kubeconfig = module.params["src"], module.params["kubeconfig"]
    hint = module.params["error_hint"]
    result = {"changed": False, "applied": False, "difference": ""}

    if module.check_mode and module.params["src_changed"]:
        result.update(changed=True, msg=f"would write and apply {src}")
        module.exit_json(**result)
    missing = [path for path in (src, kubeconfig) if not os.path.exists(path)]
    if missing:
        if module.check_mode:
            result.update(changed=True, msg=f"would apply {src} ({', '.join(missing)} not written yet)")
            module.exit_json(**result)
        module.fail_json(msg=f"cannot apply {src}: {', '.join(missing)} does not exist", **result)

    kubectl = Kubectl(module, kubeconfig)
    differs, difference, error = compare(kubectl, src, module.params["missing_namespace_is_a_change"])
    if error:
        module.fail_json(
            msg=f"kubectl cannot compare the cluster with {src}: {error}" + (f" {hint}" if hint else ""),
            **result,
        )
    result["difference"] = difference
    if module._diff and differs:
        result["diff"] = {"prepared": difference}
    if not differs:
        module.exit_json(msg=f"the cluster matches {src}", **result)
    if module.check_mode:
        result.update(changed=True, msg=f"would apply {src}")
        module.exit_json(**result)

    rc, out, err = kubectl.run("apply", "-f", src)
    if rc != 0:
        module.fail_json(
            msg=f"kubectl apply -f {src}: {(err or out).strip()}" + (f" {hint}" if hint else ""), **result
        )
    result.update(changed=True, applied=True, stdout_lines=out.splitlines(), msg=f"applied {src}")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
