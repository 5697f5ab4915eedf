"""Roles bundle_serve and bundle_client on lab nodes: the lab's bundle, served by cp-1 and used by a
worker over the lab network; the real apt, nginx, registry, skopeo and containerd.

Runs a lab of its own (APPLIANCE_LAB_NAME=labserve on 172.28.3.0/24, one worker).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.conftest import BIN, PROJECT, run_cli

pytestmark = pytest.mark.lab

LAB_ENV = {"APPLIANCE_LAB_NAME": "labserve", "APPLIANCE_LAB_SUBNET": "172.28.3.0/24"}
CP = "172.28.3.10"
PLAYBOOK = "playbooks/bundle.yml"


def lab_cli(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env=LAB_ENV, timeout=timeout)


def on(node: str, script: str) -> subprocess.CompletedProcess[str]:
    return lab_cli("lab", "exec", node, "--", "sh", "-c", script)


def run_playbook(*extra: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    # The lab's nodes run docker, but test_containerd_pulls_... pulls with containerd's own client.
    result = lab_cli("run", PLAYBOOK, "--json", "-e", "bundle_client_containerd_mirrors=true", *extra)
    try:
        summary = json.loads(result.stdout)
    except json.JSONDecodeError:
        summary = {}
    return result, summary


def changed(summary: dict) -> dict[str, int]:
    return {host: tally["changed"] for host, tally in summary["hosts"].items()}


@pytest.fixture(scope="module")
def served():
    built = run_cli("lab", "bundle", timeout=4 * 3600)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr
    digest = re.search(r"manifest sha256 ([0-9a-f]{64})", built.stdout).group(1)
    bundle = Path(re.search(r"bundle (\S+): \d+ files", built.stdout).group(1))
    up = lab_cli("lab", "up", "--workers", "1")
    assert up.returncode == 0, up.stderr
    # --check first, on the fresh nodes: nothing is installed yet, so there is no service to restart.
    checked = run_playbook("--check", "-e", f"appliance_bundle_manifest_sha256={digest}")
    left_by_check = on("cp-1", "ls -A /var/lib/appliance/bundle /etc/apt/sources.list.d 2>&1").stdout
    result, summary = run_playbook("-e", f"appliance_bundle_manifest_sha256={digest}")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr
    yield bundle, digest, summary, (*checked, left_by_check)
    lab_cli("lab", "down")


def test_check_mode_on_fresh_nodes_fails_nowhere_and_copies_nothing(served):
    _, _, _, (result, summary, left) = served
    assert result.returncode == 0, result.stdout[-3000:]
    # It reports what it would do (copy the bundle, add the apt source, install and start the services)...
    assert summary["hosts"]["cp-1"]["changed"] > 0
    # ...and did none of it.
    assert "No such file or directory" in left and "appliance-bundle.list" not in left, left


def image_archives(bundle: Path) -> dict[str, str]:
    """upstream image name -> the image ID its archive in the bundle holds."""
    files = json.loads((bundle / "manifest.json").read_text())["files"]
    found = {}
    for name, entry in files.items():
        if name.startswith("images/"):
            image = f"{entry['component']}:{entry['version']}"
            with tarfile.open(bundle / name) as tar:
                config = json.load(tar.extractfile("manifest.json"))[0]["Config"]
            found[image] = "sha256:" + config.rsplit("/", 1)[-1].removesuffix(".json")
    return found


def test_first_run_serves_and_a_second_run_changes_nothing(served):
    _, digest, first, _ = served
    assert first["hosts"]["cp-1"]["changed"] > 0
    result, summary = run_playbook("-e", f"appliance_bundle_manifest_sha256={digest}")
    assert result.returncode == 0, result.stdout[-3000:]
    assert changed(summary) == {"cp-1": 0, "worker-1": 0}


def test_check_mode_on_the_served_nodes_reports_no_change(served):
    result, summary = run_playbook("--check")
    assert result.returncode == 0, result.stdout[-3000:]
    assert changed(summary) == {"cp-1": 0, "worker-1": 0}


def test_the_apt_source_trusts_the_bundles_key_alone_and_an_altered_release_fails_on_a_worker(served):
    """Issue 24: no [trusted=yes]. The source names the bundle's own key (signed-by), so a Release that
    is not the one `bundle build` signed, here InRelease altered on the serving node, fails apt-get update
    on the worker; put back, the update works again."""
    for node, source in (("worker-1", f"http://{CP}:8081/"), ("cp-1", "file:/var/lib/appliance/bundle/debs")):
        listed = on(node, "cat /etc/apt/sources.list.d/appliance-bundle.list").stdout
        assert "trusted=yes" not in listed, listed
        assert f"deb [signed-by=/etc/apt/keyrings/appliance-bundle.gpg] {source} ./" in listed, listed
    update = (
        "apt-get update --error-on=any -o Dir::Etc::sourcelist=/etc/apt/sources.list.d/appliance-bundle.list "
        "-o Dir::Etc::sourceparts=- -o APT::Get::List-Cleanup=0"
    )
    served_release = "/var/lib/appliance/bundle/debs/InRelease"
    assert on("cp-1", f"cp -p {served_release} /root/InRelease.good").returncode == 0
    try:
        altered = on("cp-1", f"sed -i 's/^Architectures: .*/Architectures: amd64 arm64/' {served_release}")
        assert altered.returncode == 0, altered.stderr
        refused = on("worker-1", update)
        assert refused.returncode != 0, refused.stdout
        assert "BADSIG" in refused.stdout + refused.stderr, refused.stdout + refused.stderr
    finally:
        on("cp-1", f"cp -p /root/InRelease.good {served_release}")
    accepted = on("worker-1", update)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert "W:" not in accepted.stderr, accepted.stderr


def test_a_worker_installs_kubeadm_from_the_bundle_repository(served):
    install = on("worker-1", "DEBIAN_FRONTEND=noninteractive apt-get install -y -q kubeadm=1.23.5-00")
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr
    assert f"http://{CP}:8081" in on("worker-1", "apt-cache policy kubeadm").stdout
    version = on("worker-1", "kubeadm version -o short")
    assert version.stdout.strip() == "v1.23.5"


def test_every_image_is_served_by_its_upstream_path_with_the_bundles_content(served):
    bundle, *_ = served
    archives = image_archives(bundle)
    assert len(archives) >= 9
    # Asked from the worker, through nginx, the way a runtime asks.
    script = (
        "import json, sys, urllib.request\n"
        "for image in sys.argv[1:]:\n"
        "    name, tag = image.rsplit(':', 1)\n"
        "    path = name.split('/', 1)[1]\n"
        f"    request = urllib.request.Request(f'http://{CP}:5000/v2/{{path}}/manifests/{{tag}}',\n"
        "        headers={'Accept': 'application/vnd.docker.distribution.manifest.v2+json'})\n"
        "    print(image, json.load(urllib.request.urlopen(request))['config']['digest'])\n"
    )
    result = lab_cli("lab", "exec", "worker-1", "--", "python3", "-c", script, *archives)
    assert result.returncode == 0, result.stderr
    served_ids = dict(line.split() for line in result.stdout.splitlines())
    assert served_ids == archives


def test_containerd_pulls_upstream_names_from_the_private_registry(served):
    install = on("worker-1", "DEBIAN_FRONTEND=noninteractive apt-get install -y -q containerd")
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr
    for image in ("k8s.gcr.io/pause:3.6", "k8s.gcr.io/coredns/coredns:v1.8.6"):
        pull = on(
            "worker-1", f"ctr --namespace bundle-test images pull --hosts-dir /etc/containerd/certs.d {image}"
        )
        assert pull.returncode == 0, pull.stdout[-2000:] + pull.stderr
        listed = on("worker-1", "ctr --namespace bundle-test images list --quiet").stdout.split()
        assert image in listed


def test_the_cluster_cannot_push_into_the_registry(served):
    script = (
        "import urllib.request, urllib.error\n"
        f"request = urllib.request.Request('http://{CP}:5000/v2/evil/blobs/uploads/', method='POST')\n"
        "try:\n"
        "    print(urllib.request.urlopen(request).status)\n"
        "except urllib.error.HTTPError as error:\n"
        "    print(error.code)\n"
    )
    assert lab_cli("lab", "exec", "worker-1", "--", "python3", "-c", script).stdout.strip() == "403"


def test_an_altered_bundle_is_refused_before_anything_is_copied(served, tmp_path):
    bundle, *_ = served
    altered = tmp_path / "bundle"
    subprocess.run(["cp", "-al", str(bundle), str(altered)], check=True)
    release = altered / "debs" / "Release"
    content = release.read_bytes()
    release.unlink()  # a new file, not the hard link to the good bundle
    release.write_bytes(content + b"# altered\n")
    before = on("cp-1", "sha256sum /var/lib/appliance/bundle/debs/Release").stdout
    result, summary = run_playbook("-e", f"appliance_bundle_dir={altered}")
    assert result.returncode == 1
    assert "fails verification" in result.stdout and "altered: debs/Release" in result.stdout
    assert on("cp-1", "sha256sum /var/lib/appliance/bundle/debs/Release").stdout == before
    assert changed(summary).get("cp-1", 0) == 0


def test_a_bundle_other_than_the_pinned_one_is_refused(served):
    result, _ = run_playbook("-e", "appliance_bundle_manifest_sha256=" + "0" * 64)
    assert result.returncode == 1
    assert "this is not the bundle that was built" in result.stdout


def test_a_file_damaged_on_the_node_is_restored_and_verified(served):
    _, digest, *_ = served
    damage = on("cp-1", "printf x >> /var/lib/appliance/bundle/manifests/kube-flannel.yml")
    assert damage.returncode == 0
    result, summary = run_playbook("-e", f"appliance_bundle_manifest_sha256={digest}")
    assert result.returncode == 0, result.stdout[-3000:]
    assert summary["hosts"]["cp-1"]["changed"] >= 1
    check = on("cp-1", "cd /var/lib/appliance/bundle && sha256sum manifests/kube-flannel.yml")
    wanted = json.loads((served[0] / "manifest.json").read_text())["files"]["manifests/kube-flannel.yml"]
    assert check.stdout.split()[0] == wanted["sha256"]


def test_tar_stream_pipes_the_files_through_the_ssh_connection_owned_by_root(served, tmp_path):
    """The action plugin bundle_serve copies with (plugins/action/tar_stream.py), over the lab's real ssh
    and sudo: its stream, not the put_file way, and the files as they are on the controller."""
    src = tmp_path / "src"
    (src / "debs").mkdir(parents=True)
    (src / "debs" / "a.deb").write_bytes(os.urandom(300_000))
    (src / "manifest.json").write_text("{}\n")
    os.chmod(src / "manifest.json", 0o664)
    dest = "/var/lib/appliance-tar-stream-test"
    args = {"src": str(src), "files": ["debs/a.deb", "manifest.json"], "dest": dest}
    result = subprocess.run(
        [
            str(BIN / "ansible"),
            "-i",
            "inventories/labserve/hosts.yml",
            "cp-1",
            "--become",
            "-m",
            "appliance.runai.tar_stream",
            "-a",
            json.dumps(args),
        ],
        cwd=PROJECT,
        env={**os.environ, "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1", "ANSIBLE_STDOUT_CALLBACK": "json"},
        capture_output=True,
        text=True,
        check=False,
    )
    outcome = json.loads(result.stdout)["plays"][0]["tasks"][0]["hosts"]["cp-1"]
    assert outcome.get("failed") is not True, outcome
    assert outcome["method"] == "stream" and outcome["files"] == 2 and outcome["changed"] is True
    listing = on(
        "cp-1", f"cd {dest} && stat -c '%n %U %G %a' debs/a.deb manifest.json && sha256sum debs/a.deb"
    )
    on("cp-1", f"rm -rf {dest}")
    lines = listing.stdout.splitlines()
    assert lines[:2] == ["debs/a.deb root root 644", "manifest.json root root 644"], listing.stdout
    assert lines[2].split()[0] == hashlib.sha256((src / "debs" / "a.deb").read_bytes()).hexdigest()
