#!/usr/bin/python
"""Ansible module node_maintenance: drain a node for maintenance, mark it down, restore it."""

from __future__ import annotations

DOCUMENTATION = r"""
module: node_maintenance
short_description: Drain a Kubernetes node for maintenance, mark an unreachable node down, restore a node
description:
  - O(state=drained) (planned maintenance) taints the node C(runai=drain:NoExecute), as Run:ai's procedure
    does, so that no new workload starts there and the running ones move to other nodes or back to
    the queue; with O(evict=true) it first cordons the node and evicts its pods through the Eviction API
    (C(kubectl drain)), which respects PodDisruptionBudgets. Then it waits until only DaemonSet and static
    pods remain and reports which pods moved and where their controllers run them now.
  - O(state=down) (unplanned downtime) is for a node that stopped answering. It taints the node the same way,
    so that its workloads move now rather than after Kubernetes' 5-minute eviction timeout, and deletes the
    node's pods from the API, since the node's kubelet cannot confirm their end.
  - O(state=restored) removes the taint and returns the node to the state it had before (a node an admin
    had cordoned before the drain stays cordoned).
  - Refuses, before any change, to drain the last control-plane node or the last Run:ai system node in
    service, to drain pods no controller would recreate (they would be lost), and to mark down a node whose
    kubelet still answers, unless O(force=true). A node that is down is not in service, so marking it
    down is never refused for being the last of its kind.
  - Runs C(kubectl) on the host, a control-plane node, with the admin kubeconfig.
options:
  node:
    description: Name of the node, as C(kubectl get nodes) shows it.
    type: str
    required: true
  state:
    description: What the node should become.
    type: str
    required: true
    choices: [drained, down, restored]
  evict:
    description:
      - With O(state=drained), cordon the node and evict its pods first, respecting PodDisruptionBudgets.
    type: bool
    default: false
  timeout:
    description: Seconds a drain may take, evictions and pods' graceful termination included.
    type: int
    default: 300
  force:
    description:
      - Drain the last control-plane or Run:ai system node in service; delete pods that no controller
        recreates; mark down a node whose kubelet still answers.
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    description: Reports what it would change and changes nothing.
  diff_mode:
    support: none
    description: Returns no diff.
author:
  - Appliance toolkit maintainers (@appliance-maintainers)
extends_documentation_fragment:
  - appliance.runai.kubeconfig
"""

EXAMPLES = r"""
- name: Drain worker-1 for maintenance, evicting its pods within their disruption budgets
  appliance.runai.node_maintenance:
    node: worker-1
    state: drained
    evict: true
    timeout: 600

- name: Return worker-1 to service
  appliance.runai.node_maintenance:
    node: worker-1
    state: restored
"""

RETURN = r"""
moved:
  description: Each pod that left the node, its controller, and the nodes that controller's pods run on now.
  returned: when pods left the node
  type: list
  elements: dict
report:
  description: What happened, one line per fact, for the operator.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.appliance.runai.plugins.module_utils.appliance_maintenance import (
    Maintenance,
    Refusal,
    Unfinished,
)
from ansible_collections.appliance.runai.plugins.module_utils.appliance_nodes import Kubectl, KubectlError

ARGUMENT_SPEC = {
    "node": {"type": "str", "required": True},
    "state": {"type": "str", "required": True, "choices": ["drained", "down", "restored"]},
    "evict": {"type": "bool", "default": False},
    "timeout": {"type": "int", "default": 300},
    "force": {"type": "bool", "default": False},
    "kubeconfig": {"type": "path", "default": "/etc/kubernetes/admin.conf"},
}


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    params = module.params
    maintenance = Maintenance(
        Kubectl(module, params["kubeconfig"]),
        params["node"],
        evict=params["evict"],
        timeout=params["timeout"],
        force=params["force"],
        check_mode=module.check_mode,
    )
    try:
        result = getattr(maintenance, params["state"])()
    except Refusal as refusal:
        module.fail_json(msg=f"{refusal} Nothing was changed.", changed=False, report=maintenance.report)
    except Unfinished as unfinished:
        module.fail_json(
            msg=str(unfinished),
            changed=True,
            blocked_by=unfinished.blocked_by,
            remaining=unfinished.remaining,
            report=maintenance.report,
        )
    except KubectlError as error:
        module.fail_json(msg=str(error), report=maintenance.report)
    module.exit_json(node=params["node"], report=maintenance.report, **result)


if __name__ == "__main__":
    main()
