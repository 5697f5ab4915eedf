"""Outcomes of role docker on a lab node (a systemd container of the node image)."""

import json


def test_the_installed_docker_is_the_bundles(host):
    assert host.package("docker.io").is_installed
    policy = host.check_output("apt-cache policy docker.io").splitlines()
    start = next(i for i, line in enumerate(policy) if line.lstrip().startswith("***"))
    sources = []
    for line in policy[start + 1 :]:
        if not line.startswith(" " * 8):  # the next version of the table
            break
        sources.append(line)
    assert any("file:/var/lib/appliance/bundle/debs" in line for line in sources), policy


def test_docker_runs_and_starts_at_boot(host):
    service = host.service("docker")
    assert service.is_running
    assert service.is_enabled


def test_docker_uses_the_systemd_cgroup_driver(host):
    assert host.check_output("docker info --format '{{.CgroupDriver}}'") == "systemd"


def test_daemon_json_is_a_merge_that_kept_the_nvidia_runtime(host):
    config = json.loads(host.file("/etc/docker/daemon.json").content_string)
    assert config["exec-opts"] == ["native.cgroupdriver=systemd"]
    assert config["runtimes"]["nvidia"]["path"] == "/usr/bin/nvidia-container-runtime"
    assert config["storage-driver"] == "vfs"
    # The retired plain-HTTP entries are gone; the site's own stays.
    assert config["insecure-registries"] == ["site.example:5000", "registry.appliance.test:5000"]
    assert config["registry-mirrors"] == ["https://registry.appliance.test:5000"]


def test_docker_loaded_the_runtime_another_component_added(host):
    runtimes = host.check_output("docker info --format '{{json .Runtimes}}'")
    assert "nvidia" in json.loads(runtimes)
