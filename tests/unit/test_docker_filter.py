"""plugins/filter/docker.py: role docker reloads dockerd for a change it can take in place, and restarts
it (with every container) only for one it cannot."""

from __future__ import annotations

import importlib.util

from tests.conftest import PROJECT

_spec = importlib.util.spec_from_file_location("docker_filter", PROJECT / "plugins" / "filter" / "docker.py")
docker_filter = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(docker_filter)

CURRENT = {
    "exec-opts": ["native.cgroupdriver=systemd"],
    "insecure-registries": ["10.0.0.10:5000"],
    "storage-driver": "overlay2",
}


def test_a_new_insecure_registry_or_mirror_is_a_reload():
    wanted = {
        **CURRENT,
        "insecure-registries": ["10.0.0.10:5000", "gcr.io"],
        "registry-mirrors": ["http://m"],
    }
    assert docker_filter.docker_reload_only(CURRENT, wanted)


def test_a_change_dockerd_cannot_reload_is_a_restart():
    assert not docker_filter.docker_reload_only(CURRENT, {**CURRENT, "storage-driver": "vfs"})
    assert not docker_filter.docker_reload_only(
        CURRENT, {**CURRENT, "insecure-registries": ["gcr.io"], "exec-opts": ["native.cgroupdriver=cgroupfs"]}
    )


def test_a_first_configuration_and_no_change_are_not_reloads():
    assert not docker_filter.docker_reload_only({}, CURRENT)
    assert not docker_filter.docker_reload_only(CURRENT, dict(CURRENT))
