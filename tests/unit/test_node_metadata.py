"""plugins/modules/node_metadata.py: which kubectl arguments it derives from a node's labels and taints.
kubectl itself runs against the lab's real cluster in tests/lab/test_cluster.py."""

from __future__ import annotations

import importlib.util

import pytest

from tests.conftest import PROJECT

MODULE = PROJECT / "plugins" / "modules" / "node_metadata.py"
_spec = importlib.util.spec_from_file_location("node_metadata", MODULE)
node_metadata = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(node_metadata)

ROLE = "node-role.kubernetes.io/runai-gpu-worker"
OTHER_ROLE = "node-role.kubernetes.io/runai-cpu-worker"


@pytest.mark.parametrize(
    ("current", "wanted", "expected"),
    [
        ({}, {ROLE: "true"}, [f"{ROLE}=true"]),
        ({ROLE: "true"}, {ROLE: "true"}, []),
        ({ROLE: "false"}, {ROLE: "true"}, [f"{ROLE}=true"]),
        ({OTHER_ROLE: "true"}, {OTHER_ROLE: None, ROLE: "true"}, [f"{ROLE}=true", f"{OTHER_ROLE}-"]),
        ({}, {OTHER_ROLE: None}, []),
        ({"kubernetes.io/hostname": "gpu-1"}, {}, []),
    ],
)
def test_label_arguments_change_only_what_differs(current, wanted, expected):
    assert sorted(node_metadata.label_arguments(current, wanted)) == sorted(expected)


def test_labels_after_the_change_keep_the_others():
    after = node_metadata.apply_labels({"a": "1", OTHER_ROLE: "true"}, [f"{ROLE}=true", f"{OTHER_ROLE}-"])
    assert after == {"a": "1", ROLE: "true"}


@pytest.mark.parametrize(
    ("current", "wanted", "expected"),
    [
        (
            [],
            [{"key": "dedicated", "value": "training", "effect": "NoSchedule"}],
            ["dedicated=training:NoSchedule"],
        ),
        (
            [{"key": "dedicated", "value": "training", "effect": "NoSchedule"}],
            [{"key": "dedicated", "value": "training", "effect": "NoSchedule"}],
            [],
        ),
        (
            [{"key": "dedicated", "value": "serving", "effect": "NoSchedule"}],
            [{"key": "dedicated", "value": "training", "effect": "NoSchedule"}],
            ["dedicated=training:NoSchedule"],
        ),
        ([{"key": "gpu", "effect": "NoExecute"}], [{"key": "gpu", "value": "", "effect": "NoExecute"}], []),
        ([], [{"key": "gpu", "value": "", "effect": "NoExecute"}], ["gpu:NoExecute"]),
    ],
)
def test_taint_arguments_add_only_missing_taints(current, wanted, expected):
    assert node_metadata.taint_arguments(current, wanted) == expected


def test_taints_after_the_change_replace_the_same_key_and_effect():
    current = [
        {"key": "dedicated", "value": "serving", "effect": "NoSchedule"},
        {"key": "node-role.kubernetes.io/master", "effect": "NoSchedule"},
    ]
    after = node_metadata.apply_taints(
        current, [{"key": "dedicated", "value": "training", "effect": "NoSchedule"}]
    )
    assert after == [
        {"key": "node-role.kubernetes.io/master", "effect": "NoSchedule"},
        {"key": "dedicated", "value": "training", "effect": "NoSchedule"},
    ]
