"""Roles bundle_serve and bundle_client on lab nodes: the lab's bundle, served by cp-1 and used by a
worker over the lab network; the real apt, nginx, registry, skopeo, containerd and docker. The registry
speaks TLS with a certificate of the appliance's CA and takes pushes with credentials only
(appliance_registry_tls, on by default).

Runs a lab of its own (APPLIANCE_LAB_NAME=labserve on 172.28.3.0/24, one worker).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.conftest import BIN, PROJECT, lab_registry_ca, lab_registry_password, run_cli

pytestmark = pytest.mark.lab

LAB_ENV = {"APPLIANCE_LAB_NAME": "labserve", "APPLIANCE_LAB_SUBNET": "172.28.3.0/24"}
CP = "172.28.3.10"
REGISTRY = f"{CP}:5000"
PLAYBOOK = "playbooks/bundle.yml"
# Where role bundle_client puts the appliance's CA for containerd and docker on the worker.
CONTAINERD_CA = f"/etc/containerd/certs.d/{REGISTRY}/appliance-ca.crt"
DOCKER_CA = f"/etc/docker/certs.d/{REGISTRY}/ca.crt"


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
    # A new appliance's CA, too: the --check below runs before it exists (role appliance_ca's first run).
    shutil.rmtree(lab_registry_ca(LAB_ENV).parent, ignore_errors=True)
    # --check first, on the fresh nodes: nothing is installed yet, so there is no service to restart.
    checked = run_playbook("--check", "-e", f"appliance_bundle_manifest_sha256={digest}")
    left_by_check = on("cp-1", "ls -A /var/lib/appliance/bundle /etc/apt/sources.list.d 2>&1").stdout
    ca_made_by_check = lab_registry_ca(LAB_ENV).parent.exists()
    result, summary = run_playbook("-e", f"appliance_bundle_manifest_sha256={digest}")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr
    yield bundle, digest, summary, (*checked, left_by_check, ca_made_by_check)
    lab_cli("lab", "down")


def test_check_mode_on_fresh_nodes_fails_nowhere_and_copies_nothing(served):
    _, _, _, (result, summary, left, ca_made) = served
    assert result.returncode == 0, result.stdout[-3000:]
    # It reports what it would do (copy the bundle, add the apt source, install and start the services,
    # make the appliance's CA)...
    assert summary["hosts"]["cp-1"]["changed"] > 0
    # ...and did none of it.
    assert "No such file or directory" in left and "appliance-bundle.list" not in left, left
    assert not ca_made


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
    # Asked from the worker, through nginx, the way a runtime asks: over TLS, the certificate checked
    # against the appliance's CA, anonymously.
    script = (
        "import json, ssl, sys, urllib.request\n"
        f"context = ssl.create_default_context(cafile='{CONTAINERD_CA}')\n"
        "for image in sys.argv[1:]:\n"
        "    name, tag = image.rsplit(':', 1)\n"
        "    path = name.split('/', 1)[1]\n"
        f"    request = urllib.request.Request(f'https://{REGISTRY}/v2/{{path}}/manifests/{{tag}}',\n"
        "        headers={'Accept': 'application/vnd.docker.distribution.manifest.v2+json'})\n"
        "    print(image, json.load(urllib.request.urlopen(request, context=context))['config']['digest'])\n"
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
        "import ssl, urllib.request, urllib.error\n"
        f"context = ssl.create_default_context(cafile='{CONTAINERD_CA}')\n"
        f"request = urllib.request.Request('https://{REGISTRY}/v2/evil/blobs/uploads/', method='POST')\n"
        "try:\n"
        "    print(urllib.request.urlopen(request, context=context).status)\n"
        "except urllib.error.HTTPError as error:\n"
        "    print(error.code)\n"
    )
    assert lab_cli("lab", "exec", "worker-1", "--", "python3", "-c", script).stdout.strip() == "403"
    # The registry itself listens on cp-1's loopback only.
    direct = on(with_curl("worker-1"), f"curl -s -o /dev/null --max-time 5 http://{CP}:5001/v2/")
    assert direct.returncode == 7  # connection refused


def with_curl(node: str) -> str:
    """curl on NODE, from the bundle's repository (the lab's nodes start without it)."""
    install = on(node, "command -v curl || DEBIAN_FRONTEND=noninteractive apt-get install -y -q curl")
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr
    return node


def test_pushes_on_the_serving_node_need_the_pushers_credentials(served):
    """Issue 24: pushes only with credentials (htpasswd, the password from the inventory's Vault) and only
    on the node itself. Without credentials the registry answers 401, with a wrong password too; with the
    pusher's it starts the upload (202). The role's own pushes filled the registry, with those credentials."""
    password = lab_registry_password(LAB_ENV)
    post = "curl -s -o /dev/null -w '%{http_code}' -X POST"
    uploads = "http://127.0.0.1:5001/v2/push-test/blobs/uploads/"
    assert on(with_curl("cp-1"), f"{post} {uploads}").stdout == "401"
    assert on("cp-1", f"{post} -u appliance:not-the-password {uploads}").stdout == "401"
    assert on("cp-1", f"{post} -u 'appliance:{password}' {uploads}").stdout == "202"
    # The users' file holds bcrypt hashes, readable by the registry's group alone; the key and nginx's site
    # (the reader's credentials) are root's alone; the password is in none of them, nor in the run's output.
    modes = on(
        "cp-1",
        "stat -c '%n %U %G %a' /etc/appliance/registry/htpasswd /etc/appliance/registry/registry.key "
        "/etc/nginx/sites-available/appliance-bundle.conf",
    ).stdout.splitlines()
    assert modes == [
        "/etc/appliance/registry/htpasswd root docker-registry 640",
        "/etc/appliance/registry/registry.key root root 600",
        "/etc/nginx/sites-available/appliance-bundle.conf root root 600",
    ]
    users = on("cp-1", "cat /etc/appliance/registry/htpasswd").stdout
    assert re.search(r"^appliance:\$2[aby]\$", users, re.M), users
    found = on("cp-1", f"grep -rlF '{password}' /etc/appliance /etc/nginx /etc/docker/registry || true")
    assert found.stdout == ""
    _, _, first, _ = served
    assert password not in json.dumps(first)


def test_the_registry_speaks_tls_with_the_appliances_ca_and_plain_http_is_refused(served):
    """Issue 24: the certificate, signed by the appliance's CA (made on the controller), names cp-1's
    address and the mirrored registries; a client without that CA refuses it, and nothing answers plain
    HTTP on the registry's port."""
    catalog = on(with_curl("worker-1"), f"curl -sS --cacert {CONTAINERD_CA} https://{REGISTRY}/v2/_catalog")
    assert catalog.returncode == 0, catalog.stderr
    assert "coredns/coredns" in json.loads(catalog.stdout)["repositories"]
    untrusted = on("worker-1", f"curl -sS -o /dev/null https://{REGISTRY}/v2/")
    assert untrusted.returncode == 60, untrusted.stderr  # the peer's certificate could not be verified
    plain = on("worker-1", f"curl -s -o /dev/null -w '%{{http_code}}' http://{REGISTRY}/v2/")
    assert plain.stdout == "400", plain.stdout  # nginx: "plain HTTP request was sent to HTTPS port"
    names = on(
        "worker-1",
        f"openssl s_client -connect {REGISTRY} -servername k8s.gcr.io -CAfile {CONTAINERD_CA}"
        " -verify_return_error </dev/null 2>/dev/null | openssl x509 -noout -ext subjectAltName",
    ).stdout
    for name in (f"IP Address:{CP}", "DNS:k8s.gcr.io", "DNS:docker.io", "DNS:nvcr.io", "DNS:quay.io"):
        assert name in names, names


def served_serial() -> str:
    """The serial number of the certificate the registry presents, checked against the appliance's CA."""
    return on(
        "worker-1",
        f"openssl s_client -connect {REGISTRY} -CAfile {CONTAINERD_CA} -verify_return_error </dev/null"
        " 2>/dev/null | openssl x509 -noout -serial",
    ).stdout.strip()


def test_the_registrys_certificate_is_renewed_and_served_at_once(served, tmp_path):
    """Role certs' renewal of the registry's certificate (`appliance certs renew` includes it on cp-1):
    forced, a new certificate from the same CA is served after nginx's reload; not due, nothing changes."""
    playbook = tmp_path / "renew.yml"
    playbook.write_text(
        "- hosts: cp-1\n"
        "  become: true\n"
        "  gather_facts: false\n"
        "  tasks:\n"
        "    - {include_role: {name: bundle_serve, tasks_from: renew_tls}}\n"
    )
    before = served_serial()
    assert before.startswith("serial="), before
    forced = lab_cli("run", str(playbook), "--json", "-e", "bundle_serve_tls_renew_force=true")
    assert forced.returncode == 0, forced.stdout[-3000:] + forced.stderr
    assert json.loads(forced.stdout)["hosts"]["cp-1"]["changed"] >= 1
    after = served_serial()
    assert after.startswith("serial=") and after != before, (before, after)
    again = lab_cli("run", str(playbook), "--json")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr
    assert json.loads(again.stdout)["hosts"]["cp-1"]["changed"] == 0
    assert served_serial() == after


def docker_playbook(directory: Path) -> Path:
    """A playbook that installs docker on worker-1 with role docker, after bundle_client's facts."""
    playbook = directory / "docker.yml"
    playbook.write_text(
        "- hosts: worker-1\n"
        "  become: true\n"
        "  tasks:\n"
        "    - {include_role: {name: bundle_client, tasks_from: facts}}\n"
        "    - {include_role: {name: docker}}\n"
    )
    return playbook


def test_docker_pulls_upstream_names_over_tls_with_no_insecure_registry(served, tmp_path):
    """Issue 24: docker, installed by role docker, trusts the appliance's CA for the registry alone:
    daemon.json has no insecure registry and an https mirror; k8s.gcr.io names reach the registry through
    the node's proxy on a link-local address (docker checks certificates there, not on 127.0.0.0/8), and
    without the CA in its certs.d docker refuses the registry's certificate."""
    playbook = docker_playbook(tmp_path)
    result = lab_cli("run", str(playbook), "--json")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    config = json.loads(on("worker-1", "cat /etc/docker/daemon.json").stdout)
    assert config.get("insecure-registries", []) == []
    assert config["registry-mirrors"] == [f"https://{REGISTRY}"]
    for image in ("k8s.gcr.io/pause:3.6", f"{REGISTRY}/coredns/coredns:v1.8.6"):
        pull = on("worker-1", f"docker pull {image}")
        assert pull.returncode == 0, pull.stdout + pull.stderr
    hidden = "/etc/docker/certs.d/k8s.gcr.io"
    assert on("worker-1", f"mv {hidden} /root/k8s.gcr.io.certs").returncode == 0
    try:
        refused = on("worker-1", "docker pull k8s.gcr.io/coredns/coredns:v1.8.6")
    finally:
        on("worker-1", f"mv /root/k8s.gcr.io.certs {hidden}")
    assert refused.returncode != 0
    assert "certificate signed by unknown authority" in refused.stdout + refused.stderr, refused.stderr


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


def test_turning_tls_off_puts_every_node_back_on_plain_http(served, tmp_path):
    """appliance_registry_tls: false on the running appliance (last: it leaves the registry without TLS):
    nginx serves the registry over plain HTTP, containerd's hosts.toml and docker's daemon.json name it by
    http:// (role docker takes out the https:// mirror), and docker pulls upstream names through the proxy
    on the loopback address again; a second run changes nothing."""
    _, digest, *_ = served
    playbook = docker_playbook(tmp_path)
    off = ("-e", "appliance_registry_tls=false", "-e", f"appliance_bundle_manifest_sha256={digest}")
    for attempt in ("first", "second"):
        result, summary = run_playbook(*off)
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr
        docker = lab_cli("run", str(playbook), "--json", *off)
        assert docker.returncode == 0, docker.stdout[-3000:] + docker.stderr
        if attempt == "second":
            assert changed(summary) == {"cp-1": 0, "worker-1": 0}
            assert json.loads(docker.stdout)["hosts"]["worker-1"]["changed"] == 0
    plain = on("worker-1", f"curl -sf http://{REGISTRY}/v2/_catalog")
    assert plain.returncode == 0 and "pause" in plain.stdout, plain.stdout + plain.stderr
    hosts_toml = on("worker-1", f"cat /etc/containerd/certs.d/{REGISTRY}/hosts.toml").stdout
    assert f'server = "http://{REGISTRY}"' in hosts_toml and "https://" not in hosts_toml, hosts_toml
    config = json.loads(on("worker-1", "cat /etc/docker/daemon.json").stdout)
    assert config["registry-mirrors"] == [f"http://{REGISTRY}"]
    assert REGISTRY in config["insecure-registries"] and "k8s.gcr.io" in config["insecure-registries"]
    on("worker-1", "docker rmi k8s.gcr.io/pause:3.6")
    pull = on("worker-1", "docker pull k8s.gcr.io/pause:3.6")
    assert pull.returncode == 0, pull.stdout + pull.stderr
