"""versions.yml: its shape, and that roles see the same data as the bundle builder."""

from __future__ import annotations

import json
import subprocess

import yaml

from appliance.bundle import versions
from tests.conftest import BIN, PROJECT

# `kubeadm config images list --kubernetes-version v1.23.5` (../shared/LAB-FACTS.md).
KUBEADM_IMAGES = [
    "k8s.gcr.io/kube-apiserver:v1.23.5",
    "k8s.gcr.io/kube-controller-manager:v1.23.5",
    "k8s.gcr.io/kube-scheduler:v1.23.5",
    "k8s.gcr.io/kube-proxy:v1.23.5",
    "k8s.gcr.io/pause:3.6",
    "k8s.gcr.io/etcd:3.5.1-0",
    "k8s.gcr.io/coredns/coredns:v1.8.6",
]


def test_versions_file_is_well_formed():
    data = versions.load(versions.versions_file(PROJECT))
    assert data["kubernetes"]["version"] == "v1.23.5"
    assert data["kubernetes"]["deb_version"] == "1.23.5-00"


def test_control_plane_images_are_exactly_what_kubeadm_asks_for():
    data = versions.load(versions.versions_file(PROJECT))
    assert set(KUBEADM_IMAGES) <= set(versions.image_names(data))


def test_kubernetes_checksums_are_kubespray_s():
    binaries = versions.load(versions.versions_file(PROJECT))["binaries"]
    assert binaries["kubeadm"]["sha256"]["amd64"].startswith("8eebded1")
    assert binaries["kubelet"]["sha256"]["amd64"].startswith("253b9db2")
    assert binaries["kubectl"]["sha256"]["amd64"].startswith("715da05c")


# Chart values sections whose images run only for what the appliance leaves off: standalone DCGM, GDS,
# node-status-exporter, and sandbox (VM) workloads (sandboxWorkloads.enabled: false).
OFF = {
    "dcgm",
    "gds",
    "nodeStatusExporter",
    "vgpuManager",
    "vgpuDeviceManager",
    "vfioManager",
    "sandboxDevicePlugin",
}


def chart_images(values: dict, app_version: str) -> set[str]:
    """Every image the GPU operator chart's values name, but the switched-off sections' and the driver's."""
    found = set()

    def walk(node: object, section: str) -> None:
        if isinstance(node, dict):
            if "repository" in node and "image" in node:
                found.add(f"{node['repository']}/{node['image']}:{node.get('version', app_version)}")
            for key, child in node.items():
                walk(child, section or key)

    for key, section in values.items():
        if key not in OFF and key != "driver":
            walk(section, key)
    walk({k: v for k, v in values["driver"].items() if k == "manager"}, "driver")
    return found


def test_the_operand_images_are_every_image_the_chart_starts_on_a_gpu_node_but_the_driver():
    data = versions.load(versions.versions_file(PROJECT))
    chart = PROJECT / data["charts"]["gpu-operator"]["source"]
    values = yaml.safe_load((chart / "chart" / "values.yaml").read_text())
    app_version = yaml.safe_load((chart / "chart" / "Chart.yaml").read_text())["appVersion"]
    nfd = yaml.safe_load((chart / "chart" / "charts" / "node-feature-discovery" / "values.yaml").read_text())
    assert not values["dcgm"]["enabled"] and not values["sandboxWorkloads"]["enabled"]
    carried = set(versions.image_names(data)) | set(versions.operand_image_names(data))
    assert chart_images(values, app_version) <= carried, chart_images(values, app_version) - carried
    assert f"{nfd['image']['repository']}:v0.10.1" in carried
    assert not any("/driver:" in image for image in carried)  # no Debian 12 driver image (versions.yml)


def test_etcd_tools_are_the_etcd_image_s_release_and_pin_its_release_archive():
    data = versions.load(versions.versions_file(PROJECT))
    etcd = data["images"]["etcd"]
    assert etcd["image"] == "k8s.gcr.io/etcd:3.5.1-0"
    ctl, utl = data["binaries"]["etcdctl"], data["binaries"]["etcdutl"]
    assert ctl["version"] == utl["version"] == etcd["module_version"] == "v3.5.1"
    # One archive holds both; kubespray v2.19.1 records its sha256 (etcd_binary_checksums).
    assert ctl["upstream_url"] == utl["upstream_url"]
    assert ctl["upstream_url"].format(version="v3.5.1", arch="amd64") == (
        "https://github.com/etcd-io/etcd/releases/download/v3.5.1/etcd-v3.5.1-linux-amd64.tar.gz"
    )
    assert (
        ctl["sha256"]
        == utl["sha256"]
        == {"amd64": "728a14914217ce60de2e1299fc1a2c2c5564e7ffd0d9dadf3f5073103ab619b4"}
    )


def test_check_names_every_problem():
    data = yaml.safe_load(versions.versions_file(PROJECT).read_text())
    data["binaries"] = {
        "kubelet": data["binaries"]["kubelet"],
        "helm": {"sha256": {"amd64": "xyz", "s390x": "0" * 64}},
    }
    del data["charts"]
    problems = versions.check(data)
    assert "missing section 'charts'" in problems
    assert "binaries: keep the components sorted by name (helm, kubelet)" in problems
    assert "binaries.helm.sha256.amd64: 'xyz' is not a sha256 hex digest" in problems
    assert "binaries.helm.sha256: unknown architecture 's390x'" in problems


def debug_lookup(inventory, expression: str) -> subprocess.CompletedProcess[str]:
    """`ansible node -m debug -a msg=EXPRESSION -o` with the project's ansible.cfg: one line, `=> {json}`."""
    return subprocess.run(
        [str(BIN / "ansible"), "node", "-i", str(inventory), "-m", "ansible.builtin.debug", "-a",
         f"msg={expression}", "-o"],
        cwd=PROJECT, capture_output=True, text=True, check=False,
        env={"ANSIBLE_CONFIG": str(PROJECT / "ansible.cfg"), "PATH": str(BIN),
             "ANSIBLE_STDOUT_CALLBACK": "oneline"},
    )  # fmt: skip


def test_roles_see_the_same_versions_through_the_lookup_plugin(tmp_path):
    inventory = tmp_path / "hosts.yml"
    inventory.write_text("all:\n  hosts:\n    node:\n      ansible_connection: local\n")
    data = versions.load(versions.versions_file(PROJECT))
    result = debug_lookup(inventory, "{{ lookup('appliance.runai.versions') }}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout.split("=>", 1)[1])["msg"] == data
    for path, expected in (
        ("kubernetes.version", "v1.23.5"),
        ("charts.gpu-operator.version", data["charts"]["gpu-operator"]["version"]),
    ):
        result = debug_lookup(inventory, f"{{{{ lookup('appliance.runai.versions', '{path}') }}}}")
        assert result.returncode == 0, result.stdout + result.stderr
        assert json.loads(result.stdout.split("=>", 1)[1])["msg"] == expected, result.stdout
    missing = debug_lookup(inventory, "{{ lookup('appliance.runai.versions', 'kubernetes.nope') }}")
    assert (
        missing.returncode != 0 and "versions.yml has no kubernetes.nope" in missing.stdout + missing.stderr
    )
