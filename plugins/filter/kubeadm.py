"""Filters config_drift and kubeadm_stored_drift.

config_drift: where a component configuration in force differs from the one the inventory asks
for, so that a re-run changes a running cluster only where it must (role kube_control_plane's kubelet
configuration, kubeadm's ConfigMap kubelet-config-1.23).

The configuration asked for is partial: kubeadm fills in every default before it stores one. So only the
keys it names are compared, at any depth; a key of a mapping asked for that is missing in force is drift,
unless its value is a zero value (false, 0, "", an empty list or mapping), which Kubernetes' serialization
leaves out (Go's omitempty): protectKernelDefaults false is stored as no protectKernelDefaults at all.
"""

from __future__ import annotations

from typing import Any

DOCUMENTATION = r"""
name: config_drift
author: Appliance toolkit maintainers (@appliance-maintainers)
short_description: Where a configuration in force differs from the one asked for (two filters)
description:
  - C(config_drift) compares a configuration asked for (a mapping that names only the keys it sets) with the
    one in force (the whole, defaulted configuration), key by key at any depth; lists and scalars are
    compared whole. It returns the dotted paths of the keys whose value differs or is missing in force,
    sorted. A zero value asked for (false, 0, "", empty) matches a key left out, as Kubernetes leaves zero
    values out when it stores a configuration.
  - C(kubeadm_stored_drift) compares the ClusterConfiguration kubeadm stored in the cluster (ConfigMap
    kubeadm-config) with the flags (extraArgs, per part) and host mounts (extraVolumes, per part) a run asks
    for, each compared whole, so a flag removed is drift as much as one added. It returns paths such as
    C(apiServer.extraArgs) or C(etcd.local.extraArgs), sorted.
  - Both return an empty list when nothing differs.
positional: _input
options:
  _input:
    description: >-
      The configuration asked for (config_drift) or the stored ClusterConfiguration (kubeadm_stored_drift).
    type: raw
    required: true
"""


def config_drift(wanted: dict[str, Any], in_force: dict[str, Any] | None) -> list[str]:
    drift: list[str] = []
    _compare(wanted, in_force or {}, "", drift)
    return sorted(drift)


def _compare(wanted: dict[str, Any], in_force: Any, prefix: str, drift: list[str]) -> None:
    for key, value in wanted.items():
        path = f"{prefix}{key}"
        if not isinstance(in_force, dict):
            drift.append(path)
        elif key not in in_force:
            if value not in (False, 0, "", None) and value != [] and value != {}:
                drift.append(path)
        elif isinstance(value, dict) and isinstance(in_force[key], dict):
            _compare(value, in_force[key], f"{path}.", drift)
        elif value != in_force[key]:
            drift.append(path)


# Flags kubeadm 1.23 adds to what it stores when the configuration does not set them (`kubeadm init phase
# upload-config kubeadm` does, `kubeadm init` did not on the lab): either way, no drift.
KUBEADM_DEFAULT_ARGS = {"apiServer": {"authorization-mode": "Node,RBAC"}}


def kubeadm_stored_drift(
    stored: dict[str, Any] | None, args: dict[str, dict[str, Any]], volumes: dict[str, list[Any]]
) -> list[str]:
    stored = stored or {}
    drift = []
    for part, wanted in args.items():
        section = stored.get(part) or {}
        if part == "etcd":
            section, path = section.get("local") or {}, "etcd.local.extraArgs"
        else:
            path = f"{part}.extraArgs"
        stored_args = _text_values(section.get("extraArgs"))
        for key, value in KUBEADM_DEFAULT_ARGS.get(part, {}).items():
            if key not in wanted and stored_args.get(key) == value:
                del stored_args[key]  # kubeadm's default, stored by some of its commands and not others
        if stored_args != _text_values(wanted):
            drift.append(path)
    for part, wanted in volumes.items():
        in_force = (stored.get(part) or {}).get("extraVolumes")
        if [_set_keys(v) for v in in_force or []] != [_set_keys(v) for v in wanted or []]:
            drift.append(f"{part}.extraVolumes")
    return sorted(drift)


def _text_values(flags: dict[str, Any] | None) -> dict[str, str]:
    """kubeadm's extraArgs are text: 30 and "30" are the same flag value."""
    return {str(key): str(value) for key, value in (flags or {}).items()}


def _set_keys(volume: dict[str, Any]) -> dict[str, Any]:
    """A volume as kubeadm stores it: keys with a zero value (readOnly false) left out (omitempty)."""
    return {key: value for key, value in volume.items() if value not in (False, "", None, 0)}


class FilterModule:
    def filters(self):
        return {"config_drift": config_drift, "kubeadm_stored_drift": kubeadm_stored_drift}
