"""The image builder's pure parts: archive names, generated Dockerfiles and recipe digests (no docker)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from appliance.bundle import gobuild, images, versions
from appliance.errors import ApplianceError
from tests.conftest import PROJECT

ETCD = "k8s.gcr.io/etcd:3.5.1-0"
KUBE_PROXY = "k8s.gcr.io/kube-proxy:v1.23.5"


@pytest.mark.parametrize(
    ("image", "file_name"),
    [
        ("k8s.gcr.io/pause:3.6", "k8s.gcr.io_pause_3.6.tar"),
        ("k8s.gcr.io/coredns/coredns:v1.8.6", "k8s.gcr.io_coredns_coredns_v1.8.6.tar"),
        (
            "docker.io/rancher/mirrored-flannelcni-flannel:v0.19.2",
            "docker.io_rancher_mirrored-flannelcni-flannel_v0.19.2.tar",
        ),
        ("registry.local:5000/team/app:1.0", "registry.local_5000_team_app_1.0.tar"),
    ],
)
def test_archive_name_is_the_image_name_made_a_file_name(image: str, file_name: str) -> None:
    assert images.archive_name(image) == file_name
    assert images.archive_name(image) == images.archive_name(image)


def test_every_image_of_versions_yml_gets_its_own_archive_and_a_recipe() -> None:
    """Every image is built here, node-feature-discovery's too: `--source build` carries every image."""
    data = versions.load()
    names = [entry["image"] for entry in data["images"].values()]
    files = [images.archive_name(name) for name in names]
    assert len(set(files)) == len(names)
    assert all("/" not in name and name.endswith(".tar") for name in files)
    assert sorted(data["images"]) == sorted(images.RECIPES)


def test_two_images_with_the_same_archive_name_are_refused() -> None:
    with pytest.raises(ApplianceError, match=re.escape("would both be saved as example.com_a_b_1.tar")):
        images._check_file_names(["example.com/a/b:1", "example.com/a_b:1"])


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Path]:
    binaries = tmp_path / "bin"
    binaries.mkdir()
    for name in ("etcd", "etcdctl", "etcdutl", "kube-proxy", "flanneld", "flannel"):
        (binaries / name).write_bytes(f"{name} binary".encode())
    ca_bundle = tmp_path / "ca-certificates.crt"
    ca_bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"busybox")
    return {"binaries": binaries, "ca_bundle": ca_bundle, "busybox": busybox}


def etcd_plan(inputs: dict[str, Path], image: str = ETCD, binaries: Path | None = None) -> images.ImagePlan:
    """The etcd image's plan, its tools (etcdctl, etcdutl) taken from the same directory as the server."""
    directory = binaries or inputs["binaries"]
    tools = {"etcdctl": directory, "etcdutl": directory}
    return images.plan_image("etcd", image, directory, ca_bundle=inputs["ca_bundle"], tool_dirs=tools)


def test_recipe_digest_is_stable_and_follows_the_binary(inputs: dict[str, Path]) -> None:
    def digest() -> str:
        return etcd_plan(inputs).digest()

    first = digest()
    assert digest() == first
    (inputs["binaries"] / "etcd").write_bytes(b"etcd binary, rebuilt")
    assert digest() != first
    (inputs["binaries"] / "etcd").write_bytes(b"etcd binary")
    assert digest() == first


def test_recipe_digest_ignores_where_the_binaries_are(inputs: dict[str, Path], tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(inputs["binaries"], elsewhere)
    moved = etcd_plan(inputs, binaries=elsewhere)
    original = etcd_plan(inputs)
    assert moved.digest() == original.digest()


def test_recipe_digest_follows_the_ca_bundle_the_base_and_the_version(inputs: dict[str, Path]) -> None:
    etcd = etcd_plan(inputs).digest()
    inputs["ca_bundle"].write_text("another bundle\n")
    assert etcd_plan(inputs).digest() != etcd
    assert etcd_plan(inputs, "k8s.gcr.io/etcd:3.5.1-1").digest() != etcd_plan(inputs).digest()

    def kube_proxy(base_id: str) -> str:
        base = images.Base("appliance-image-base:0123", base_id)
        return images.plan_image("kube-proxy", KUBE_PROXY, inputs["binaries"], base=base).digest()

    assert kube_proxy("sha256:aaa") == kube_proxy("sha256:aaa")
    assert kube_proxy("sha256:aaa") != kube_proxy("sha256:bbb")


def test_static_images_are_from_scratch_with_a_distroless_like_tree(inputs: dict[str, Path]) -> None:
    plan = etcd_plan(inputs)
    assert plan.dockerfile.startswith("FROM scratch\nCOPY rootfs/ /\n")
    assert "ENV PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n" in plan.dockerfile
    assert 'org.opencontainers.image.version="3.5.1-0"' in plan.dockerfile
    assert 'CMD ["/usr/local/bin/etcd"]' in plan.dockerfile
    assert "ENTRYPOINT" not in plan.dockerfile  # kubeadm runs `etcd ...` as the container's command
    assert plan.tree["tmp"] == images.Directory(0o1777)
    assert {"etc/passwd", "etc/group", "etc/nsswitch.conf", images.CA_BUNDLE, "usr/local/bin/etcd"} <= set(
        plan.tree
    )
    passwd = plan.tree["etc/passwd"]
    assert isinstance(passwd, images.Content)
    assert [line.split(":")[0] for line in passwd.data.decode().splitlines()] == ["root", "nobody"]


def test_etcd_image_holds_etcdctl_and_etcdutl_beside_the_server_as_upstream_s(
    inputs: dict[str, Path], tmp_path: Path
) -> None:
    """Upstream's k8s.gcr.io/etcd:3.5.1-0 has /usr/local/bin/etcd, etcdctl and etcdutl; the tools are
    gobuild targets of their own, and a rebuilt tool makes a new recipe (so the image is rebuilt)."""
    ctl, utl = tmp_path / "etcdctl-out", tmp_path / "etcdutl-out"
    for directory, name in ((ctl, "etcdctl"), (utl, "etcdutl")):
        directory.mkdir()
        (directory / name).write_bytes(f"{name} binary".encode())

    def plan() -> images.ImagePlan:
        tools = {"etcdctl": ctl, "etcdutl": utl}
        return images.plan_image(
            "etcd", ETCD, inputs["binaries"], ca_bundle=inputs["ca_bundle"], tool_dirs=tools
        )

    first = plan()
    for name, directory in (("etcd", inputs["binaries"]), ("etcdctl", ctl), ("etcdutl", utl)):
        assert first.tree[f"usr/local/bin/{name}"] == images.Copy(directory / name)
    assert "gobuild targets etcd, etcdctl, etcdutl" in first.dockerfile
    assert images.RECIPES["etcd"].targets() == ["etcd", "etcdctl", "etcdutl"]
    first_digest = first.digest()  # a digest reads the files when asked: take it before one changes
    (ctl / "etcdctl").write_bytes(b"etcdctl binary, rebuilt")
    assert plan().digest() != first_digest
    (ctl / "etcdctl").write_bytes(b"etcdctl binary")
    assert plan().digest() == first_digest


def test_etcd_image_without_its_tools_is_refused_in_one_line(inputs: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ApplianceError, match=r"image etcd: the etcdctl binaries was not given"):
        images.plan_image("etcd", ETCD, inputs["binaries"], ca_bundle=inputs["ca_bundle"])
    tools = {"etcdctl": inputs["binaries"], "etcdutl": tmp_path}
    with pytest.raises(ApplianceError, match=r"gobuild target etcdutl has no etcdutl") as error:
        images.plan_image("etcd", ETCD, inputs["binaries"], ca_bundle=inputs["ca_bundle"], tool_dirs=tools)
    assert "\n" not in str(error.value)


def test_debian_images_build_on_the_local_base(inputs: dict[str, Path]) -> None:
    base = images.Base("appliance-image-base:0123", "sha256:aaa")
    plan = images.plan_image(
        "flannel", "docker.io/rancher/mirrored-flannelcni-flannel:v0.19.2", inputs["binaries"], base=base
    )
    assert plan.dockerfile.startswith("FROM appliance-image-base:0123\n")
    assert 'ENTRYPOINT ["/opt/bin/flanneld"]' in plan.dockerfile
    assert set(plan.tree) == {"opt/bin/flanneld"}


def test_pause_runs_as_65535_from_our_own_c_source() -> None:
    plan = images.plan_image("pause", "k8s.gcr.io/pause:3.6", None)
    assert 'ENTRYPOINT ["/pause"]' in plan.dockerfile
    assert "USER 65535:65535" in plan.dockerfile
    program = plan.tree["pause"]
    assert isinstance(program, images.StaticProgram)
    assert "SIGTERM" in program.source and 'VERSION="3.6"' in program.defines


def test_flannel_cni_plugin_carries_busybox_for_cp(inputs: dict[str, Path]) -> None:
    plan = images.plan_image(
        "flannel-cni-plugin",
        "docker.io/rancher/mirrored-flannelcni-flannel-cni-plugin:v1.1.0",
        inputs["binaries"],
        busybox=inputs["busybox"],
    )
    assert plan.dockerfile.startswith("FROM scratch\n")
    assert plan.tree["bin/cp"] == images.Symlink("busybox")
    assert plan.tree["bin/sh"] == images.Symlink("busybox")
    assert "flannel" in plan.tree


def test_unknown_image_and_missing_binary_are_one_line_errors(inputs: dict[str, Path]) -> None:
    with pytest.raises(ApplianceError, match=r"images.mystery: no image recipe"):
        images.plan_image("mystery", "example.com/mystery:1", None)
    (inputs["binaries"] / "etcd").unlink()
    with pytest.raises(ApplianceError, match=r"gobuild target etcd has no etcd") as error:
        etcd_plan(inputs)
    assert "\n" not in str(error.value)


def test_archive_is_saved_again_only_when_missing_or_from_another_recipe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    saves: list[str] = []

    def fake_docker(*args: str, **_: object) -> None:
        assert args[:2] == ("save", "--output")
        saves.append(args[3])
        Path(args[2]).write_bytes(b"archive of " + args[3].encode())

    monkeypatch.setattr(images.docker, "docker", fake_docker)
    archive = images._save(ETCD, "digest1", tmp_path, log=lambda _: None)
    assert archive == tmp_path / "k8s.gcr.io_etcd_3.5.1-0.tar"
    images._save(ETCD, "digest1", tmp_path, log=lambda _: None)
    assert saves == [ETCD]
    images._save(ETCD, "digest2", tmp_path, log=lambda _: None)
    assert saves == [ETCD, ETCD]
    archive.unlink()
    images._save(ETCD, "digest2", tmp_path, log=lambda _: None)
    assert saves == [ETCD, ETCD, ETCD]
    assert archive.stat().st_mode & 0o777 == 0o644


def test_build_images_refuses_an_image_it_has_no_recipe_for_before_touching_docker(tmp_path: Path) -> None:
    data = {"images": {"mystery": {"image": "example.com/mystery:1"}, "gpu-operator": {"image": "x/y:1"}}}
    with pytest.raises(ApplianceError, match=r"no image recipe for mystery in"):
        images.build_images(data, lambda _: tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_gpu_operator_image_holds_the_operator_and_its_state_manifests(tmp_path: Path) -> None:
    """As NVIDIA's Dockerfile: /usr/bin/gpu-operator, assets/ as /opt/gpu-operator, not root; the recipe
    digest follows a changed manifest (the operator reads them at run time)."""
    output = tmp_path / "gpu-operator-out"
    (output / "assets" / "state-driver").mkdir(parents=True)
    (output / "gpu-operator").write_bytes(b"operator binary")
    manifest = output / "assets" / "state-driver" / "0500_daemonset.yaml"
    manifest.write_text("kind: DaemonSet\n")
    ca_bundle = tmp_path / "ca.crt"
    ca_bundle.write_text("-----BEGIN CERTIFICATE-----\n")

    def plan() -> images.ImagePlan:
        return images.plan_image(
            "gpu-operator", "nvcr.io/nvidia/gpu-operator:v1.11.1", output, ca_bundle=ca_bundle
        )

    first = plan()
    first_digest = first.digest()
    assert isinstance(first.tree["usr/bin/gpu-operator"], images.Copy)
    assert first.tree["opt/gpu-operator/state-driver/0500_daemonset.yaml"] == images.Copy(manifest, 0o644)
    assert isinstance(first.tree["opt/gpu-operator/state-driver"], images.Directory)
    assert 'ENTRYPOINT ["/usr/bin/gpu-operator"]' in first.dockerfile
    assert "USER 65534:65534" in first.dockerfile
    manifest.write_text("kind: DaemonSet\nmetadata: {name: changed}\n")
    assert plan().digest() != first_digest


def test_gpu_operator_image_without_its_manifests_is_refused(tmp_path: Path) -> None:
    (tmp_path / "gpu-operator").write_bytes(b"operator binary")
    ca_bundle = tmp_path / "ca.crt"
    ca_bundle.write_text("x")
    with pytest.raises(ApplianceError, match="has no assets"):
        images.plan_image(
            "gpu-operator", "nvcr.io/nvidia/gpu-operator:v1.11.1", tmp_path, ca_bundle=ca_bundle
        )


NFD = "k8s.gcr.io/nfd/node-feature-discovery:v0.10.1"
NFD_CHART = PROJECT.parent / "shared/upstream/gpu-operator-v1.11.1/chart/charts/node-feature-discovery"


@pytest.fixture
def nfd_outputs(tmp_path: Path) -> dict[str, Path]:
    """What gobuild leaves for node-feature-discovery's image: its target's binaries and worker
    configuration, and grpc-health-probe's binary."""
    nfd = tmp_path / "nfd"
    conf = nfd / gobuild.NFD_WORKER_CONF
    conf.parent.mkdir(parents=True)
    conf.write_text("#core:\n#  sleepInterval: 60s\n")
    for name in gobuild.NFD_COMMANDS:
        (nfd / name).write_bytes(f"{name} binary".encode())
    probe = tmp_path / "grpc-health-probe"
    probe.mkdir()
    (probe / "grpc_health_probe").write_bytes(b"probe binary")
    ca_bundle = tmp_path / "ca.crt"
    ca_bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    return {"nfd": nfd, "probe": probe, "ca_bundle": ca_bundle}


def nfd_plan(outputs: dict[str, Path]) -> images.ImagePlan:
    return images.plan_image(
        "node-feature-discovery",
        NFD,
        outputs["nfd"],
        ca_bundle=outputs["ca_bundle"],
        tool_dirs={"grpc-health-probe": outputs["probe"]},
    )


def test_node_feature_discovery_image_is_upstream_s_minimal_image(nfd_outputs: dict[str, Path]) -> None:
    """/usr/bin/nfd-* and grpc_health_probe, the example worker configuration, user 65534 and no
    entrypoint (the chart names the command), on the static base."""
    plan = nfd_plan(nfd_outputs)
    for name in ("nfd-master", "nfd-worker", "nfd-topology-updater"):
        assert plan.tree[f"usr/bin/{name}"] == images.Copy(nfd_outputs["nfd"] / name)
    assert plan.tree["usr/bin/grpc_health_probe"] == images.Copy(nfd_outputs["probe"] / "grpc_health_probe")
    conf = nfd_outputs["nfd"] / gobuild.NFD_WORKER_CONF
    assert plan.tree["etc/kubernetes/node-feature-discovery/nfd-worker.conf"] == images.Copy(conf, 0o644)
    assert images.CA_BUNDLE in plan.tree
    assert plan.dockerfile.startswith("FROM scratch\nCOPY rootfs/ /\n")
    assert "USER 65534:65534\n" in plan.dockerfile
    assert "ENV GRPC_GO_LOG_SEVERITY_LEVEL=INFO\n" in plan.dockerfile
    assert "ENTRYPOINT" not in plan.dockerfile and "CMD" not in plan.dockerfile
    assert images.RECIPES["node-feature-discovery"].targets() == [
        "node-feature-discovery",
        "grpc-health-probe",
    ]
    first = plan.digest()
    conf.write_text("core:\n  sleepInterval: 10s\n")
    assert nfd_plan(nfd_outputs).digest() != first


def test_node_feature_discovery_image_without_the_probe_is_refused(nfd_outputs: dict[str, Path]) -> None:
    (nfd_outputs["probe"] / "grpc_health_probe").unlink()
    with pytest.raises(ApplianceError, match="gobuild target grpc-health-probe has no grpc_health_probe"):
        nfd_plan(nfd_outputs)


@pytest.mark.skipif(not NFD_CHART.is_dir(), reason=f"{NFD_CHART} is not beside the checkout")
def test_node_feature_discovery_image_runs_what_the_gpu_operator_chart_asks() -> None:
    """The chart's image name (repository and appVersion) is versions.yml's, and every command and probe
    program its pods run is in the image, where they look for it."""
    chart = yaml.safe_load((NFD_CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((NFD_CHART / "values.yaml").read_text())
    assert (
        f"{values['image']['repository']}:{chart['appVersion']}"
        == (versions.load()["images"]["node-feature-discovery"]["image"])
    )
    templates = "".join(path.read_text() for path in sorted((NFD_CHART / "templates").glob("*.yaml")))
    commands = set(re.findall(r'command:\s*\n\s*- "?([\w/-]+)"?', templates))
    assert commands == {"nfd-master", "nfd-worker", "nfd-topology-updater", "/usr/bin/grpc_health_probe"}
    recipe = images.RECIPES["node-feature-discovery"]
    in_image = {path for _, path in recipe.binaries} | {path for _, _, path in recipe.tools}
    for command in commands:
        assert (command if command.startswith("/") else f"/usr/bin/{command}") in in_image, command
    assert values["master"]["securityContext"]["runAsNonRoot"] and recipe.user == "65534:65534"
