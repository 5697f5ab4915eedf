"""plugins/filter/kubeadm.py: config_drift decides whether a re-run changes the cluster's kubelet
configuration, so it must name every difference the inventory asks for and nothing kubeadm defaulted."""

from __future__ import annotations

import importlib.util

from tests.conftest import PROJECT

_spec = importlib.util.spec_from_file_location(
    "kubeadm_filter", PROJECT / "plugins" / "filter" / "kubeadm.py"
)
kubeadm_filter = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kubeadm_filter)
config_drift = kubeadm_filter.config_drift

# The head of kubelet-config-1.23 as kubeadm 1.23.5 stored it on the lab (every default filled in).
IN_FORCE = {
    "apiVersion": "kubelet.config.k8s.io/v1beta1",
    "kind": "KubeletConfiguration",
    "authentication": {"anonymous": {"enabled": False}, "webhook": {"cacheTTL": "0s", "enabled": True}},
    "cgroupDriver": "systemd",
    "clusterDNS": ["10.96.0.10"],
    "rotateCertificates": True,
}
WANTED = {
    "apiVersion": "kubelet.config.k8s.io/v1beta1",
    "kind": "KubeletConfiguration",
    "cgroupDriver": "systemd",
}


def test_what_kubeadm_defaulted_is_no_drift():
    assert config_drift(WANTED, IN_FORCE) == []


def test_a_key_asked_for_that_is_missing_in_force_is_drift():
    assert config_drift({**WANTED, "protectKernelDefaults": True}, IN_FORCE) == ["protectKernelDefaults"]


def test_a_value_turned_off_is_drift_as_much_as_one_turned_on():
    assert config_drift({"protectKernelDefaults": False}, {**IN_FORCE, "protectKernelDefaults": True}) == [
        "protectKernelDefaults"
    ]
    assert config_drift({"protectKernelDefaults": True}, {**IN_FORCE, "protectKernelDefaults": True}) == []


def test_a_zero_value_asked_for_matches_a_key_kubernetes_left_out():
    """kubeadm stores protectKernelDefaults false as no key at all (omitempty): no drift, so a run with the
    default turned off is idempotent; anything else left out is drift."""
    assert (
        config_drift({"protectKernelDefaults": False, "clusterDomain": "", "evictionHard": {}}, IN_FORCE)
        == []
    )
    assert config_drift({"maxPods": 0}, IN_FORCE) == []
    assert config_drift({"maxPods": 110}, IN_FORCE) == ["maxPods"]


def test_nested_keys_are_compared_one_by_one_and_named_by_their_path():
    wanted = {"authentication": {"anonymous": {"enabled": False}, "webhook": {"cacheTTL": "2m0s"}}}
    assert config_drift(wanted, IN_FORCE) == ["authentication.webhook.cacheTTL"]


def test_lists_and_scalars_are_compared_whole_and_a_mapping_over_a_scalar_is_drift():
    assert config_drift({"clusterDNS": ["10.96.0.10", "10.96.0.11"]}, IN_FORCE) == ["clusterDNS"]
    assert config_drift({"cgroupDriver": {"name": "systemd"}}, IN_FORCE) == ["cgroupDriver"]


def test_no_configuration_in_force_is_drift_of_everything_asked_for():
    assert config_drift(WANTED, None) == ["apiVersion", "cgroupDriver", "kind"]


kubeadm_stored_drift = kubeadm_filter.kubeadm_stored_drift
ARGS = {
    "apiServer": {"profiling": "false", "audit-log-maxage": "30"},
    "controllerManager": {"profiling": "false"},
    "scheduler": {},
    "etcd": {},
}
VOLUMES = {
    "apiServer": [{"name": "audit-log", "hostPath": "/var/log/kubernetes/audit"}],
    "controllerManager": [],
}
STORED = {
    "apiServer": {
        "certSANs": ["172.28.6.10"],
        "extraArgs": {**ARGS["apiServer"], "authorization-mode": "Node,RBAC"},  # kubeadm's own
        "extraVolumes": VOLUMES["apiServer"],
    },
    "controllerManager": {"extraArgs": {"profiling": "false"}},
    "scheduler": {},
    "etcd": {"local": {"dataDir": "/var/lib/etcd"}},
}


def test_a_stored_cluster_configuration_with_the_same_flags_and_mounts_is_no_drift():
    assert kubeadm_stored_drift(STORED, ARGS, VOLUMES) == []


def test_a_flag_removed_or_changed_is_drift_of_that_part_alone():
    assert kubeadm_stored_drift(STORED, {**ARGS, "apiServer": {"audit-log-maxage": "30"}}, VOLUMES) == [
        "apiServer.extraArgs"
    ]
    assert kubeadm_stored_drift(STORED, {**ARGS, "etcd": {"cipher-suites": "X"}}, VOLUMES) == [
        "etcd.local.extraArgs"
    ]
    assert kubeadm_stored_drift(STORED, ARGS, {**VOLUMES, "apiServer": []}) == ["apiServer.extraVolumes"]


def test_no_stored_configuration_is_drift_of_every_part_that_asks_for_something():
    assert kubeadm_stored_drift(None, ARGS, VOLUMES) == [
        "apiServer.extraArgs",
        "apiServer.extraVolumes",
        "controllerManager.extraArgs",
    ]


def test_kubeadm_stores_flag_values_as_text_and_leaves_out_a_volumes_zero_values():
    """What kubeadm init uploaded on the lab: "30" for 30, and no readOnly for readOnly false."""
    stored = {
        "apiServer": {
            "extraArgs": {"audit-log-maxage": "30", "authorization-mode": "Node,RBAC"},
            "extraVolumes": [
                {
                    "name": "audit-log",
                    "hostPath": "/var/log/kubernetes/audit",
                    "pathType": "DirectoryOrCreate",
                }
            ],
        }
    }
    args = {"apiServer": {"audit-log-maxage": 30}}
    volumes = {
        "apiServer": [
            {
                "name": "audit-log",
                "hostPath": "/var/log/kubernetes/audit",
                "readOnly": False,
                "pathType": "DirectoryOrCreate",
            }
        ]
    }
    assert kubeadm_stored_drift(stored, args, volumes) == []


def test_kubeadms_own_authorization_mode_is_no_drift_whether_it_was_stored_or_not():
    without = {**STORED, "apiServer": {**STORED["apiServer"], "extraArgs": dict(ARGS["apiServer"])}}
    assert kubeadm_stored_drift(without, ARGS, VOLUMES) == []
    assert kubeadm_stored_drift(STORED, ARGS, VOLUMES) == []
    other = {**ARGS, "apiServer": {**ARGS["apiServer"], "authorization-mode": "Node,RBAC,Webhook"}}
    assert kubeadm_stored_drift(STORED, other, VOLUMES) == ["apiServer.extraArgs"]
