"""Documentation fragment appliance.runai.kubeconfig: the option of every module that runs kubectl."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  kubeconfig:
    description:
      - The kubeconfig kubectl uses, on the node the module runs on (a control-plane node's admin.conf).
    type: path
    default: /etc/kubernetes/admin.conf
"""
