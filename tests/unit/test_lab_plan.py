"""The lab's plan: addresses, inventory groups, container settings and the image recipe digest."""

from __future__ import annotations

import ipaddress

import pytest

from appliance.errors import UsageError
from appliance.lab import image, lab, nodes
from tests.conftest import PROJECT

LAB = nodes.LabId("lab", ipaddress.IPv4Network("172.28.0.0/24"))


def test_default_plan_is_one_control_plane_and_two_workers_at_fixed_addresses():
    planned = nodes.plan(LAB, 2)
    assert [(n.name, n.role, n.address) for n in planned] == [
        ("cp-1", "control_plane", "172.28.0.10"),
        ("worker-1", "worker", "172.28.0.11"),
        ("worker-2", "worker", "172.28.0.12"),
    ]
    assert planned[1].container == "appliance-lab-worker-1"


@pytest.mark.parametrize("workers", [-1, 21])
def test_worker_count_out_of_range_is_refused(workers):
    with pytest.raises(UsageError, match="0 to 20 workers"):
        nodes.plan(LAB, workers)


def test_lab_id_from_environment_validates(monkeypatch):
    monkeypatch.setenv("APPLIANCE_LAB_SUBNET", "not-a-subnet")
    with pytest.raises(UsageError, match="APPLIANCE_LAB_SUBNET"):
        nodes.LabId.from_environment()
    monkeypatch.setenv("APPLIANCE_LAB_SUBNET", "172.28.5.0/24")
    monkeypatch.setenv("APPLIANCE_LAB_NAME", "bad name")
    with pytest.raises(UsageError, match="APPLIANCE_LAB_NAME"):
        nodes.LabId.from_environment()


def test_groups_match_the_sample_inventory():
    groups = lab.groups_for(nodes.plan(LAB, 2))
    assert groups == {
        "control_plane": ["cp-1"],
        "gpu_workers": ["worker-1"],
        "cpu_workers": ["worker-2"],
        "runai_system": ["worker-2"],
        "jumpbox": ["cp-1"],
    }
    # With no workers the control plane hosts the Run:ai services.
    assert lab.groups_for(nodes.plan(LAB, 0))["runai_system"] == ["cp-1"]


def test_sample_inventory_has_the_same_groups():
    import yaml

    sample = yaml.safe_load((PROJECT / "inventories" / "sample" / "hosts.yml").read_text())
    children = sample["all"]["children"]
    groups = (
        "control_plane",
        "gpu_workers",
        "cpu_workers",
        "runai_system",
        "jumpbox",
        "workers",
        "k8s_cluster",
    )
    for group in groups:
        assert group in children


def test_node_container_is_not_privileged_and_lacks_sys_resource():
    platform = nodes.platform_settings(PROJECT)
    args = nodes.run_arguments(nodes.plan(LAB, 1)[1], "appliance-node:x", platform)
    assert "--privileged" not in args
    assert "--cap-add=SYS_ADMIN" in args
    assert not any("SYS_RESOURCE" in a for a in args)
    assert "--security-opt=seccomp=unconfined" in args
    assert "--cgroupns" in args and args[args.index("--cgroupns") + 1] == "host"
    # A reboot inside the node restarts its container (GPU remediation reboots nodes); docker stop does not.
    assert args[args.index("--restart") + 1] == "on-failure"
    for path in ("/var/lib/docker", "/var/lib/containerd", "/var/lib/kubelet"):
        assert f"--volume=appliance-lab-worker-1-{path.rsplit('/', 1)[1]}:{path}" in args
    assert args[-2:] == ["appliance-node:x", "/lib/systemd/systemd"]


def test_image_tag_derives_from_the_recipe(monkeypatch):
    tag = image.image_tag()
    assert tag == f"appliance-node:{image.recipe_digest()}"
    assert image.image_tag() == tag  # stable
    monkeypatch.setattr(image, "PACKAGES", (*image.PACKAGES, "vim"))
    assert image.image_tag() != tag


def test_run_ai_variables_point_at_cp_1_and_keep_one_generated_password(tmp_path):
    planned = nodes.plan(LAB, 2)
    files = lab.LabFiles(
        key=tmp_path / "id_ed25519",
        known_hosts=tmp_path / "known_hosts",
        inventory=tmp_path / "h",
        admin_conf=tmp_path / "admin.conf",
    )
    tarball = tmp_path / "runai-airgapped-2.9.0.tar.gz"
    tarball.write_bytes(b"")
    first = lab.runai_variables(planned, files, tarball)
    password = tmp_path / "runai-admin-password"
    assert password.stat().st_mode & 0o777 == 0o600
    assert len(password.read_text().strip()) >= 20
    assert first["runai_external_ip"] == planned[0].address
    assert first["runai_domain"] == f"runai.{planned[0].lab}.test"
    assert first["runai_airgapped_tar"] == str(tarball)
    assert str(password) in first["runai_admin_password"]  # the inventory names the file, not the secret
    before = password.read_text()
    assert lab.runai_variables(planned, files, tarball) == first and password.read_text() == before
