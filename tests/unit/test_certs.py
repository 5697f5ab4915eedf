"""Role certs' program appliance-certs (roles/certs/files/appliance_certs.py) on a kubeadm tree of real
certificates made here, read by the real openssl; and the filter certs_report (plugins/filter/certs.py).

The renewal itself (kubeadm certs renew, the components restarted) runs on the lab: tests/lab/test_site.py.
"""

from __future__ import annotations

import base64
import datetime as dt
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import PROJECT

PROGRAM = PROJECT / "roles" / "certs" / "files" / "appliance_certs.py"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


certs = _load("appliance_certs", PROGRAM)
report = _load("certs_filter", PROJECT / "plugins" / "filter" / "certs.py")

NOW = dt.datetime(2027, 1, 10, 12, 0, tzinfo=dt.UTC)


def _certificate(common_name: str, days: float, issuer=None, serial: int = 0x1A2B) -> tuple[bytes, object]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    issuer_name, issuer_key = (subject, key) if issuer is None else issuer
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=days))
        .sign(issuer_key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM), (subject, key)


def _kubeconfig(user_lines: str) -> str:
    return (
        "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    server: https://10.0.0.3:6443\n  name: k\n"
        f"users:\n- name: u\n  user:\n{user_lines}"
    )


@pytest.fixture
def control_plane(tmp_path) -> Path:
    """/etc/kubernetes of a control-plane node: CAs for ten years, apiserver in 20 days, the rest in 200."""
    base = tmp_path / "kubernetes"
    (base / "pki" / "etcd").mkdir(parents=True)
    ca_pem, ca = _certificate("kubernetes", 3650, serial=1)
    (base / "pki" / "ca.crt").write_bytes(ca_pem)
    (base / "pki" / "front-proxy-ca.crt").write_bytes(_certificate("front-proxy-ca", 3650)[0])
    (base / "pki" / "etcd" / "ca.crt").write_bytes(_certificate("etcd-ca", 3650)[0])
    for name, relative, _component in certs.KUBEADM_CERTIFICATES:
        days = 20 if name == "apiserver" else 200
        pem = _certificate(name, days, issuer=ca)[0]
        if relative.endswith(".conf"):
            data = base64.b64encode(pem).decode()
            (base / relative).write_text(
                _kubeconfig(f"    client-certificate-data: {data}\n    client-key-data: x\n")
            )
        else:
            (base / relative).write_bytes(pem)
    kubelet_pki = tmp_path / "kubelet-pki"
    kubelet_pki.mkdir()
    (kubelet_pki / "kubelet-client-2027-01-01.pem").write_bytes(
        _certificate("system:node:cp-1", 300, issuer=ca)[0]
    )
    (kubelet_pki / "kubelet-client-current.pem").symlink_to("kubelet-client-2027-01-01.pem")
    (base / "kubelet.conf").write_text(
        _kubeconfig(f"    client-certificate: {kubelet_pki}/kubelet-client-current.pem\n    client-key: k\n")
    )
    return base


def test_every_certificate_of_a_control_plane_with_its_kind_and_days_left(control_plane):
    found = {c.name: c for c in certs.read_certificates(certs.Config(), control_plane, NOW)}
    assert set(found) == {
        "ca",
        "front-proxy-ca",
        "etcd-ca",
        *(name for name, _, _ in certs.KUBEADM_CERTIFICATES),
        "kubelet-client",
    }
    assert found["ca"].kind == "ca" and found["ca"].serial == "01"
    assert found["apiserver"].kind == "kubeadm" and found["apiserver"].component == "kube-apiserver"
    assert found["apiserver"].subject == "CN=apiserver" and found["apiserver"].issuer == "CN=kubernetes"
    assert found["apiserver"].days_left == 20.0
    assert found["apiserver"].not_after == (NOW + dt.timedelta(days=20)).isoformat()
    # Embedded in a kubeconfig, and a kubeconfig naming the kubelet's rotating file.
    assert found["admin.conf"].subject == "CN=admin.conf" and found["admin.conf"].days_left == 200.0
    assert (
        found["kubelet-client"].kind == "kubelet" and found["kubelet-client"].subject == "CN=system:node:cp-1"
    )
    assert found["kubelet-client"].path.endswith("kubelet-client-current.pem")


def test_a_worker_has_the_cluster_ca_and_its_kubelet_certificate_alone(control_plane):
    for path in control_plane.rglob("*"):
        if (path.is_file() and path.name not in ("ca.crt", "kubelet.conf")) or path.parent.name == "etcd":
            path.unlink()
    names = [c.name for c in certs.read_certificates(certs.Config(), control_plane, NOW)]
    assert names == ["ca", "kubelet-client"]


def test_what_is_due_never_includes_a_ca_or_the_kubelets_and_force_takes_every_kubeadm_one(control_plane):
    found = certs.read_certificates(certs.Config(), control_plane, NOW)
    assert [c.name for c in certs.due(found, 90, force=False)] == ["apiserver"]
    assert [c.name for c in certs.due(found, 10, force=False)] == []
    forced = certs.due(found, 0, force=True)
    assert [c.name for c in forced] == [name for name, _, _ in certs.KUBEADM_CERTIFICATES]
    # etcd before the API server, each component once; admin.conf and etcd-healthcheck-client restart nothing.
    assert certs.components_to_restart(forced) == list(certs.RESTART_ORDER)
    assert certs.components_to_restart(certs.due(found, 90, force=False)) == ["kube-apiserver"]


def test_a_file_that_is_not_a_certificate_or_is_missing_is_one_clear_error(control_plane, tmp_path):
    (control_plane / "pki" / "apiserver.crt").write_text("garbage\n")
    with pytest.raises(certs.CertsError, match=r"apiserver .*not a certificate openssl can read"):
        certs.read_certificates(certs.Config(), control_plane, NOW)
    config = certs.Config(files={"runai-domain": str(tmp_path / "nope.crt")})
    with pytest.raises(certs.CertsError, match=r"runai-domain: .*nope.crt does not exist"):
        certs.read_certificates(config, control_plane, NOW, only_files=True)


def test_a_dry_run_names_what_is_due_and_changes_nothing(control_plane):
    before = {p: p.read_bytes() for p in control_plane.rglob("*") if p.is_file()}
    lines = []
    result = certs.renew(certs.Config(), 90, False, True, control_plane, lines.append)
    assert result["due"] == ["apiserver"] and result["renewed"] == [] and result["error"] is None
    assert lines == ["would renew apiserver"]
    assert {p: p.read_bytes() for p in control_plane.rglob("*") if p.is_file()} == before


def test_nothing_due_renews_nothing(control_plane):
    result = certs.renew(certs.Config(), 10, False, False, control_plane, lambda line: None)
    assert result["due"] == [] and result["renewed"] == [] and result["error"] is None


def test_a_failing_kubeadm_is_recorded_as_the_error_with_nothing_restarted(
    control_plane, tmp_path, monkeypatch
):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    kubeadm = bin_dir / "kubeadm"
    kubeadm.write_text("#!/bin/sh\necho 'error: the API server is down' >&2\nexit 1\n")
    kubeadm.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    result = certs.renew(certs.Config(), 90, False, False, control_plane, lambda line: None)
    assert result["renewed"] == [] and result["restarted"] == []
    assert "kubeadm certs renew apiserver exited 1: error: the API server is down" in result["error"]


def test_the_copies_of_admin_conf_are_refreshed_keeping_owner_and_mode(control_plane, tmp_path):
    home = tmp_path / "home" / ".kube"
    home.mkdir(parents=True)
    stale = home / "config"
    stale.write_text("old\n")
    stale.chmod(0o600)
    absent_dir = tmp_path / "root" / ".kube" / "config"  # no ~/.kube there: left alone
    config = certs.Config(admin_kubeconfig_copies=[str(stale), str(absent_dir)])
    assert certs.refresh_copies(config, control_plane, lambda line: None) == [str(stale)]
    assert stale.read_bytes() == (control_plane / "admin.conf").read_bytes()
    assert stale.stat().st_mode & 0o777 == 0o600
    assert not absent_dir.parent.exists()
    assert certs.refresh_copies(config, control_plane, lambda line: None) == []  # already the same


def test_the_command_prints_its_json_document_and_refuses_a_bad_file_argument(tmp_path):
    config = tmp_path / "config.json"
    pem = _certificate("runai.lab.test", 400)[0]
    (tmp_path / "tls.crt").write_bytes(pem)
    config.write_text(json.dumps({"runtime_endpoint": "unix:///run/containerd/containerd.sock"}))
    ran = subprocess.run(
        [
            sys.executable,
            str(PROGRAM),
            "--config",
            str(config),
            "status",
            "--only-files",
            "--file-kind",
            "appliance",
            "--file",
            f"runai-domain={tmp_path / 'tls.crt'}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    document = json.loads(ran.stdout)
    assert set(document) == {"certificates", "last_renewal", "last_check"}
    [row] = document["certificates"]
    assert (
        row["name"] == "runai-domain" and row["kind"] == "appliance" and row["subject"] == "CN=runai.lab.test"
    )
    assert row["not_after"] == (NOW + dt.timedelta(days=400)).isoformat()
    expected = (NOW + dt.timedelta(days=400) - dt.datetime.now(dt.UTC)).total_seconds() / 86400
    assert abs(row["days_left"] - expected) < 0.1
    bad = subprocess.run(
        [sys.executable, str(PROGRAM), "--config", str(config), "status", "--file", "no-equals-sign"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2 and "give NAME=PATH" in bad.stderr


def test_a_broken_configuration_is_one_line(tmp_path):
    config = tmp_path / "config.json"
    config.write_text('{"no_such_setting": 1}')
    ran = subprocess.run(
        [sys.executable, str(PROGRAM), "--config", str(config), "renew", "--dry-run"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ran.returncode == 1
    assert ran.stderr.startswith("appliance-certs: error: configuration ") and "no_such_setting" in ran.stderr


def _document(*rows: tuple[str, str, float], renewal: dict | None = None, check: dict | None = None) -> dict:
    return {
        "certificates": [
            {
                "name": name,
                "path": f"/etc/kubernetes/pki/{name}.crt",
                "kind": kind,
                "subject": f"CN={name}",
                "issuer": "CN=kubernetes",
                "serial": "0A",
                "not_after": "2027-12-01T10:00:00+00:00",
                "days_left": days,
                "component": None,
            }
            for name, kind, days in rows
        ],
        "last_renewal": renewal,
        "last_check": check,
    }


def test_the_report_names_what_expires_within_the_warning_and_lists_every_node():
    nodes = {
        "worker-1": _document(("ca", "ca", 3600.0), ("kubelet-client", "kubelet", 300.0)),
        "controller": _document(("runai-domain", "appliance", 12.4)),
        "cp-1": _document(
            ("apiserver", "kubeadm", 29.6),
            renewal={
                "time": "2026-12-01T03:40:00+00:00",
                "renewed": ["apiserver", "admin.conf"],
                "restarted": ["kube-apiserver"],
                "error": None,
            },
            check={"time": "2027-01-01T03:12:00+00:00", "renewed": [], "before_days": 90, "error": None},
        ),
        "cp-2": _document(
            ("apiserver", "kubeadm", 200.0),
            renewal={
                "time": "2027-01-01T03:20:00+00:00",
                "renewed": ["apiserver"],
                "error": "etcd did not come back",
            },
        ),
    }
    verdict = report.certs_report(nodes, 30)
    assert [(c["node"], c["name"], c["expiring"]) for c in verdict["certificates"]] == [
        ("cp-1", "apiserver", True),
        ("cp-2", "apiserver", False),
        ("worker-1", "ca", False),
        ("worker-1", "kubelet-client", False),
        ("controller", "runai-domain", True),
    ]
    assert verdict["expiring"] == [
        "cp-1 apiserver (30 days left, 2027-12-01)",
        "controller runai-domain (12 days left, 2027-12-01)",
    ]
    assert verdict["lines"][0].split() == [
        "NODE",
        "CERTIFICATE",
        "KIND",
        "NOT",
        "AFTER",
        "(UTC)",
        "DAYS",
        "SUBJECT",
    ]
    assert verdict["lines"][-4:] == [
        "cp-1: last renewal 2026-12-01 03:40:00 UTC renewed 2 certificate(s), restarted kube-apiserver",
        "cp-1: last check 2027-01-01 03:12:00 UTC: nothing was due within 90 days",
        "cp-2: last renewal 2027-01-01 03:20:00 UTC FAILED: etcd did not come back",
        "5 certificates; 2 expire within 30 days (marked !)",
    ]
    assert set(verdict["renewals"]) == {"cp-1", "cp-2"}
    assert report.certs_report(nodes, 5)["expiring"] == []


def test_the_report_refuses_what_is_not_a_status_document():
    with pytest.raises(report.AnsibleFilterError, match="cp-1: not a document of appliance-certs status"):
        report.certs_report({"cp-1": {"oops": 1}}, 30)
    with pytest.raises(report.AnsibleFilterError, match="warn_days 'soon' is not a number"):
        report.certs_report({}, "soon")
