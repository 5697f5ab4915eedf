"""plugins/module_utils/appliance_maintenance.py (module node_maintenance) and node_status.py, with
plugins/module_utils/appliance_nodes.py:
which pods a drain moves, which nodes it must not drain, which budgets block it, what it reports.
The modules run against the lab's real cluster in tests/lab/test_maintenance.py."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import yaml

from tests.conftest import PROJECT


def _load(name: str, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# Ansible ships plugins/module_utils/*.py to the node under the collection's package path; here the same name.
UTILS = "ansible_collections.appliance.runai.plugins.module_utils"
nodes = _load(f"{UTILS}.appliance_nodes", PROJECT / "plugins/module_utils/appliance_nodes.py")
maintenance = _load(
    f"{UTILS}.appliance_maintenance", PROJECT / "plugins/module_utils/appliance_maintenance.py"
)
module = _load("node_maintenance", PROJECT / "plugins/modules/node_maintenance.py")
status = _load("node_status", PROJECT / "plugins/modules/node_status.py")

DRAIN = {"key": "runai", "value": "drain", "effect": "NoExecute"}


def node(name, *, roles=(), ready="True", unschedulable=False, taints=()):
    labels = {f"node-role.kubernetes.io/{role}": "" for role in roles}
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": {"unschedulable": unschedulable, "taints": list(taints)},
        "status": {"conditions": [{"type": "Ready", "status": ready}]},
    }


def pod(name, *, on="worker-1", kind="ReplicaSet", owner="web-1", labels=None, phase="Running", **extra):
    meta = {"name": name, "namespace": "default", "labels": labels or {"app": "web"}}
    if kind:
        meta["ownerReferences"] = [{"kind": kind, "name": owner, "controller": True}]
    meta.update(extra.pop("meta", {}))
    return {"metadata": meta, "spec": {"nodeName": on, **extra}, "status": {"phase": phase}}


def test_a_drain_moves_workload_pods_but_not_daemonset_static_or_finished_pods():
    pods = [
        pod("web-a"),
        pod("job-a", kind="Job", owner="batch"),
        pod("bare", kind=None),
        pod("flannel", kind="DaemonSet", owner="kube-flannel-ds"),
        pod(
            "etcd-cp-1", kind="Node", owner="cp-1", meta={"annotations": {"kubernetes.io/config.mirror": "x"}}
        ),
        pod("done", kind="Job", owner="batch", phase="Succeeded"),
    ]
    assert [p["metadata"]["name"] for p in nodes.workload_pods(pods)] == ["web-a", "job-a", "bare"]


@pytest.mark.parametrize(
    ("tolerations", "stays"),
    [
        ([], False),
        ([{"operator": "Exists"}], True),  # tolerates every taint, as kube-proxy does
        ([{"key": "runai", "operator": "Exists", "effect": "NoExecute"}], True),
        ([{"key": "runai", "operator": "Equal", "value": "drain"}], True),
        ([{"key": "runai", "operator": "Equal", "value": "other"}], False),
        ([{"operator": "Exists", "effect": "NoSchedule"}], False),
        ([{"key": "runai", "operator": "Exists", "tolerationSeconds": 30}], False),  # leaves after 30 s
    ],
)
def test_tolerates_tells_which_pods_the_drain_taint_leaves_in_place(tolerations, stays):
    assert nodes.tolerates(pod("p", tolerations=tolerations), DRAIN) is stays


def test_the_last_control_plane_and_system_node_in_service_are_named():
    cluster = [
        node("cp-1", roles=["control-plane", "master"]),
        node("worker-1", roles=["runai-gpu-worker"]),
        node("worker-2", roles=["runai-system"]),
        node("worker-3", roles=["runai-system"], taints=[DRAIN]),  # drained: not in service
    ]
    assert nodes.last_of_its_kind(cluster[0], cluster) == ["control-plane"]
    assert nodes.last_of_its_kind(cluster[1], cluster) == []
    assert nodes.last_of_its_kind(cluster[2], cluster) == ["Run:ai system"]
    cluster[3]["spec"]["taints"] = []
    assert nodes.last_of_its_kind(cluster[2], cluster) == []
    cluster[3]["status"]["conditions"][0]["status"] = "Unknown"  # down: not in service either
    assert nodes.last_of_its_kind(cluster[2], cluster) == ["Run:ai system"]


@pytest.mark.parametrize(
    ("selector", "labels", "matches"),
    [
        ({"matchLabels": {"app": "web"}}, {"app": "web", "tier": "1"}, True),
        ({"matchLabels": {"app": "web"}}, {"app": "db"}, False),
        (
            {"matchExpressions": [{"key": "app", "operator": "In", "values": ["web", "db"]}]},
            {"app": "db"},
            True,
        ),
        (
            {"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["web"]}]},
            {"app": "web"},
            False,
        ),
        ({"matchExpressions": [{"key": "app", "operator": "Exists"}]}, {}, False),
        ({"matchExpressions": [{"key": "app", "operator": "DoesNotExist"}]}, {}, True),
        ({}, {"app": "web"}, True),  # policy/v1: an empty selector selects every pod of the namespace
        (None, {"app": "web"}, False),
    ],
)
def test_selector_matches_as_kubernetes_does(selector, labels, matches):
    assert maintenance.selector_matches(selector, labels) is matches


def test_blocking_budgets_names_the_budget_that_allows_no_disruption_and_what_it_covers():
    remaining = [pod("web-a"), pod("db-a", labels={"app": "db"})]

    def budget(name, namespace, app, allowed):
        return {
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"selector": {"matchLabels": {"app": app}}},
            "status": {"disruptionsAllowed": allowed},
        }

    budgets = [
        budget("web", "default", "web", 0),
        budget("db", "default", "db", 1),
        budget("web", "other", "web", 0),
    ]
    assert maintenance.blocking_budgets(remaining, budgets) == [
        "PodDisruptionBudget default/web allows 0 disruptions now (it covers default/web-a)"
    ]


def test_where_they_went_follows_each_controller_to_its_pods_on_other_nodes():
    left = [pod("web-a"), pod("web-b"), pod("bare", kind=None)]
    everywhere = [
        pod("web-c", on="worker-2"),
        pod("web-d", on="worker-3"),
        pod("web-e", on=None),  # waiting for a node
        pod("web-a", meta={"deletionTimestamp": "2026-11-24T00:00:00Z"}),  # still going: not counted
    ]
    moved, lines = maintenance.where_they_went("worker-1", left, everywhere)
    assert moved[0] == {
        "pod": "default/web-a",
        "controller": "ReplicaSet default/web-1",
        "now_on": ["worker-2", "worker-3"],
    }
    assert lines == [
        "ReplicaSet default/web-1: 2 pod(s) left worker-1; its pods now run on worker-2, worker-3; "
        "1 waiting for a node",
        "default/bare: deleted; no controller recreates it",
    ]


def test_why_still_there_gives_the_reason_a_pod_has_not_left():
    assert "still terminating (grace period 30 s)" in maintenance.why_still_there(
        pod("web-a", meta={"deletionTimestamp": "x", "deletionGracePeriodSeconds": 30})
    )
    assert "tolerates runai=drain:NoExecute" in maintenance.why_still_there(
        pod("web-a", tolerations=[{"operator": "Exists"}])
    )


def test_status_table_shows_each_node_state_pods_roles_and_taints():
    cluster = [
        node("worker-1", roles=["runai-gpu-worker"], taints=[DRAIN], unschedulable=True),
        node("cp-1", roles=["control-plane", "master"]),
        node("worker-2", ready="Unknown", unschedulable=True),
    ]
    pods = [
        pod("web-a", on="cp-1"),
        pod("ds", on="worker-1", kind="DaemonSet"),
        pod("done", on="cp-1", phase="Failed"),
    ]
    summary = status.summarise(cluster, pods)
    assert [(n["name"], n["drained"], n["cordoned"], n["pods"], n["workload_pods"]) for n in summary] == [
        ("cp-1", False, False, 1, 1),
        ("worker-1", True, True, 1, 0),
        ("worker-2", False, True, 0, 0),
    ]
    table = status.table(summary)
    assert table[0].split() == ["NODE", "READY", "STATE", "PODS", "ROLES", "TAINTS"]
    assert table[2].split()[:3] == ["worker-1", "True", "drained,cordoned"]
    assert table[2].split()[3:] == ["1", "(0", "workload)", "runai-gpu-worker", "runai=drain:NoExecute"]
    assert table[3].split()[:3] == ["worker-2", "Unknown", "cordoned"]


@pytest.mark.parametrize("plugin", [module, status])
def test_documentation_parses(plugin):
    for block in (plugin.DOCUMENTATION, plugin.EXAMPLES, plugin.RETURN):
        assert yaml.safe_load(block)
