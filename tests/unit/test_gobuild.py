"""The wrapper modules that let components with local replace directives build from the module proxy."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import pytest

from appliance.bundle import build, gobuild, openapi, upstream, versions
from appliance.errors import ApplianceError
from tests.conftest import PROJECT

KUBERNETES_GO_MOD = """module k8s.io/kubernetes

go 1.16

require (
\tgithub.com/spf13/cobra v1.2.1
\tk8s.io/api v0.0.0
\tk8s.io/client-go v0.0.0
)

replace (
\tgithub.com/spf13/cobra => github.com/spf13/cobra v1.2.1
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/client-go => ./staging/src/k8s.io/client-go
)
"""

ETCD_SERVER_GO_MOD = """module go.etcd.io/etcd/server/v3

go 1.16

require (
\tgo.etcd.io/etcd/client/v2 v2.305.1
\tgo.etcd.io/etcd/raft/v3 v3.5.1
)

replace (
\tgo.etcd.io/etcd/client/v2 => ./../client/v2
\tgo.etcd.io/etcd/raft/v3 => ../raft
)

// Bad imports are sometimes causing attempts to pull that code.
// This makes the error more explicit.
replace go.etcd.io/etcd => ./FORBIDDEN_DEPENDENCY
"""

# go.etcd.io/etcd/etcdctl/v3 v3.5.1's go.mod, shortened: raft is replaced but not required (etcdutl needs it).
ETCDCTL_GO_MOD = """module go.etcd.io/etcd/etcdctl/v3

go 1.16

require (
\tgo.etcd.io/etcd/client/v3 v3.5.1
\tgo.etcd.io/etcd/etcdutl/v3 v3.5.1
)

replace (
\tgo.etcd.io/etcd/client/v3 => ../client/v3
\tgo.etcd.io/etcd/etcdutl/v3 => ../etcdutl
\tgo.etcd.io/etcd/raft/v3 => ../raft
)

replace go.etcd.io/etcd => ./FORBIDDEN_DEPENDENCY
"""


def targets():
    return gobuild.targets(versions.load(versions.versions_file(PROJECT)))


def test_kubernetes_staging_modules_become_their_published_releases():
    go_mod = gobuild.wrapper_go_mod(targets()["kubernetes"], KUBERNETES_GO_MOD)
    assert "require k8s.io/kubernetes v1.23.5" in go_mod
    assert "\tk8s.io/api => k8s.io/api v0.23.5" in go_mod
    assert "\tk8s.io/client-go => k8s.io/client-go v0.23.5" in go_mod
    assert "\tgithub.com/spf13/cobra => github.com/spf13/cobra v1.2.1" in go_mod
    assert "go 1.17" in go_mod  # raised so that `go mod tidy` prunes the module graph


def test_local_replaces_take_the_required_version_and_guards_are_dropped():
    target = targets()["etcd"]
    go_mod = gobuild.wrapper_go_mod(target, ETCD_SERVER_GO_MOD)
    assert "\tgo.etcd.io/etcd/client/v2 => go.etcd.io/etcd/client/v2 v2.305.1" in go_mod
    assert "\tgo.etcd.io/etcd/raft/v3 => go.etcd.io/etcd/raft/v3 v3.5.1" in go_mod
    assert "FORBIDDEN_DEPENDENCY" not in go_mod


def test_kubernetes_binaries_carry_the_release_version():
    target = targets()["kubernetes"]
    flags = " ".join(target.ldflags)
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        assert f"-X {package}.gitVersion=v1.23.5" in flags
        assert f"-X {package}.gitCommit=c285e781331a3785a7f436042c65c5641ce8a9e9" in flags
        assert f"-X {package}.buildDate=2022-03-16T15:58:47Z" in flags
    control_plane = {"kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy"}
    assert set(target.binaries) == {"kubeadm", "kubelet", "kubectl", *control_plane}


def test_recipe_digest_changes_with_the_recipe():
    target = targets()["helm"]
    changed = gobuild.GoTarget(**{**target.__dict__, "version": "v3.8.3"})
    assert gobuild.recipe_digest(target) != gobuild.recipe_digest(changed)


def test_module_proxy_case_encoding():
    assert gobuild._escape("github.com/NVIDIA/gpu-operator") == "github.com/!n!v!i!d!i!a/gpu-operator"


def test_openapi_inputs_are_the_tagged_packages_of_kubernetes_and_its_staging_modules(tmp_path):
    def write(path: str, text: str) -> None:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)

    tagged = "// +k8s:openapi-gen=true\npackage v1\n"
    write("kubernetes/pkg/apis/core/v1/doc.go", tagged)
    write("kubernetes/pkg/apis/core/v1/types.go", "package v1\n")
    write("kubernetes/pkg/untagged/doc.go", "// +k8s:deepcopy-gen=package\npackage untagged\n")
    write("kubernetes/vendor/k8s.io/x/doc.go", tagged)  # vendor trees are skipped
    write("kubernetes/_output/doc.go", tagged)
    write("api/core/v1/doc.go", tagged)
    write("code-generator/examples/doc.go", tagged)  # upstream's scan leaves these out
    staging = {name: tmp_path / name for name in ("api", "code-generator")}
    assert openapi.input_packages(tmp_path / "kubernetes", staging) == [
        "k8s.io/api/core/v1",
        "k8s.io/kubernetes/pkg/apis/core/v1",
    ]


def test_extra_replaces_point_kubernetes_at_the_generated_copy():
    target = targets()["kubernetes"]
    assert target.openapi
    go_mod = gobuild.wrapper_go_mod(target, KUBERNETES_GO_MOD, ["k8s.io/kubernetes => ./src/kubernetes"])
    assert "\tk8s.io/kubernetes => ./src/kubernetes" in go_mod


def test_etcd_tools_are_modules_of_their_own_at_the_etcd_image_s_release():
    for tool in ("etcdctl", "etcdutl"):
        target = targets()[tool]
        assert (target.module, target.version) == (f"go.etcd.io/etcd/{tool}/v3", "v3.5.1")
        assert target.binaries == {tool: f"go.etcd.io/etcd/{tool}/v3"}  # main package at the module's root
    go_mod = gobuild.wrapper_go_mod(targets()["etcdctl"], ETCDCTL_GO_MOD)
    assert "require go.etcd.io/etcd/etcdctl/v3 v3.5.1" in go_mod
    assert "\tgo.etcd.io/etcd/etcdutl/v3 => go.etcd.io/etcd/etcdutl/v3 v3.5.1" in go_mod
    assert "raft" not in go_mod and "FORBIDDEN_DEPENDENCY" not in go_mod


def test_every_bundle_binary_is_built_here_and_downloadable_upstream():
    """bin/ of the bundle: each file is a versions.yml binary, made by a gobuild target that has it, and
    `--source upstream` knows the release download of that target."""
    data = versions.load(versions.versions_file(PROJECT))
    built = targets()
    for name, target in build.BUNDLE_BINARIES.items():
        assert name in data["binaries"], name
        assert name in built[target].binaries, (name, target)
        assert name in upstream.TARGETS[target], (name, target)
    assert {"etcdctl", "etcdutl"} <= set(build.BUNDLE_BINARIES)


def local_target(source: Path, **fields) -> gobuild.GoTarget:
    return gobuild.GoTarget(
        "example",
        "example.org/tool",
        "v1.0.0",
        {"tool": "example.org/tool/cmd/tool"},
        local_source=str(source),
        **fields,
    )


def write_module(directory: Path, go_mod: str = "module example.org/tool\n\ngo 1.17\n") -> Path:
    (directory / "cmd" / "tool").mkdir(parents=True)
    (directory / "go.mod").write_text(go_mod)
    (directory / "cmd" / "tool" / "main.go").write_text("package main\n\nfunc main() {}\n")
    return directory


def test_a_local_source_is_the_wrapper_s_replacement_and_its_go_mod_is_read_there(tmp_path):
    """A module the proxy refuses: its go.mod comes from the directory (no download), its replaces are
    restated, the directory replaces the module, and extra replaces follow."""
    go_mod = (
        "module example.org/tool\n\ngo 1.17\n\nrequire k8s.io/api v0.22.0\n\n"
        "replace k8s.io/api => k8s.io/api v0.22.0\n"
    )
    source = write_module(tmp_path / "tool-v1.0.0", go_mod)
    target = local_target(source, replaces=("example.org/old => example.org/old v1.0.2",))
    assert gobuild.go_mod_of(target) == go_mod
    wrapper = gobuild.wrapper_go_mod(target, go_mod)
    assert "require example.org/tool v1.0.0\n" in wrapper
    assert wrapper.endswith(
        "replace (\n"
        "\tk8s.io/api => k8s.io/api v0.22.0\n"
        f"\texample.org/tool => {source}\n"
        "\texample.org/old => example.org/old v1.0.2\n"
        ")\n"
    )


def test_a_missing_local_source_is_one_line_naming_the_directory(tmp_path):
    target = local_target(tmp_path / "absent")
    with pytest.raises(ApplianceError, match=r"cannot read .*absent/go.mod .*\.\./shared/upstream"):
        gobuild.go_mod_of(target)
    with pytest.raises(ApplianceError, match=r"absent holds no Go module"):
        gobuild.source_tree_digest(tmp_path / "absent")


def test_recipe_digest_follows_the_local_source_s_content_not_its_place(tmp_path, monkeypatch):
    monkeypatch.setattr(gobuild, "go_version", lambda: "go1.26.8")
    here = write_module(tmp_path / "here")
    there = write_module(tmp_path / "there")
    assert gobuild.recipe_digest(local_target(here)) == gobuild.recipe_digest(local_target(there))
    (there / "cmd" / "tool" / "main.go").write_text("package main\n\nfunc main() { println() }\n")
    assert gobuild.recipe_digest(local_target(here)) != gobuild.recipe_digest(local_target(there))
    (there / "cmd" / "tool" / "main.go").write_text("package main\n\nfunc main() {}\n")
    (there / "cmd" / "tool" / "main.go").chmod(0o755)
    assert gobuild.recipe_digest(local_target(here)) != gobuild.recipe_digest(local_target(there))


def test_fields_added_later_leave_the_digests_of_cached_builds_alone(monkeypatch):
    """A target that sets neither local_source nor replaces keeps the digest it had before they existed,
    so that adding them rebuilt nothing (Kubernetes takes most of an hour)."""
    monkeypatch.setattr(gobuild, "go_version", lambda: "go1.26.8")
    target = targets()["helm"]
    before = {name: value for name, value in asdict(target).items() if name not in gobuild.LATER_FIELDS}
    recipe = json.dumps(
        {"target": before, "go": "go1.26.8", "wrapper": gobuild.WRAPPER_FORMAT}, sort_keys=True
    )
    assert gobuild.recipe_digest(target) == hashlib.sha256(recipe.encode()).hexdigest()[:16]
    assert gobuild.recipe_digest(gobuild.GoTarget(**{**target.__dict__, "replaces": ("a => b v1",)})) != (
        gobuild.recipe_digest(target)
    )


def test_node_feature_discovery_builds_from_its_release_s_source_beside_the_checkout():
    """The proxy refuses the module: its source is ../shared/upstream/node-feature-discovery-v0.10.1 (as the
    GPU operator's chart), built as its Makefile builds the image (version, the chart's /host- mounts)."""
    target = gobuild.targets(versions.load(versions.versions_file(PROJECT)), PROJECT)[
        "node-feature-discovery"
    ]
    assert target.local_source == str(
        (PROJECT.parent / "shared/upstream/node-feature-discovery-v0.10.1").resolve()
    )
    assert (target.module, target.version) == ("sigs.k8s.io/node-feature-discovery", "v0.10.1")
    assert set(target.binaries) == {"nfd-master", "nfd-worker", "nfd-topology-updater"}
    assert target.binaries["nfd-worker"] == "sigs.k8s.io/node-feature-discovery/cmd/nfd-worker"
    assert "-X sigs.k8s.io/node-feature-discovery/pkg/version.version=v0.10.1" in target.ldflags
    assert "-X sigs.k8s.io/node-feature-discovery/source.pathPrefix=/host-" in target.ldflags
    assert target.files == ("deployment/components/worker-config/nfd-worker.conf.example",)
    assert target.replaces == ("github.com/modern-go/reflect2 => github.com/modern-go/reflect2 v1.0.2",)


def test_grpc_health_probe_is_a_module_of_its_own():
    target = targets()["grpc-health-probe"]
    assert (target.module, target.version) == ("github.com/grpc-ecosystem/grpc-health-probe", "v0.4.10")
    assert target.binaries == {"grpc_health_probe": "github.com/grpc-ecosystem/grpc-health-probe"}
    assert target.local_source is None and target.replaces == ()
