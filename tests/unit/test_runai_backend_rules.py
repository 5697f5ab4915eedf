"""plugins/filter/runai_backend.py: every rule role runai_backend judges its settings and the Run:ai
tarball by, one case per problem. The lab tier runs the role (tests/lab/test_site.py: a missing or
corrupt tarball, a domain without a certificate strategy, each stopped before any change)."""

from __future__ import annotations

import pytest
from ansible_collections.appliance.runai.plugins.filter.runai_backend import problems, required_members

VERSION = "2.9.0"
LISTING = ["./", *(f"./{member}" for member in required_members(VERSION))]
SHA = "ab" * 32
GOOD = {
    "tarball": "/srv/runai-airgapped-2.9.0.tar.gz",
    "tarball_stat": {"isreg": True},
    "tarball_read": {"rc": 0, "stderr": ""},
    "tarball_lines": [SHA, *LISTING],
    "tarball_sha256": SHA.upper(),
    "version": VERSION,
    "domain": "runai.example.com",
    "external_ips": ["10.0.0.100"],
    "tls_generate": False,
    "cert_file": "/etc/runai/tls.crt",
    "key_file": "/etc/runai/tls.key",
    "ca_file": "/etc/runai/ca.crt",
    "tls_stat": [{"item": "/etc/runai/tls.crt", "stat": {"isreg": True}}],
    "nfs_server": "10.0.0.5",
    "nfs_path": "/exports/runai",
    "storage_class": "",
    "local_storage_path": "",
    "admin_password": "Vault-pw-1",
}


def test_good_settings_and_tarball_have_no_problem():
    assert problems(GOOD) == []
    assert problems({**GOOD, "tarball_sha256": ""}) == []  # the pin is optional in the lab
    assert problems({**GOOD, "require_sha256": True}) == []


def test_outside_the_lab_the_tarball_must_be_pinned_and_the_message_names_the_command():
    (problem,) = problems({**GOOD, "tarball_sha256": "", "require_sha256": True})
    assert problem.startswith("runai_airgapped_tar_sha256 is not set")
    assert "`sha256sum /srv/runai-airgapped-2.9.0.tar.gz`" in problem


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (
            {"tarball_stat": {}},
            "The Run:ai tarball /srv/runai-airgapped-2.9.0.tar.gz (runai_airgapped_tar) does not exist on the"
            " controller.",
        ),
        (
            {"tarball_read": {"rc": 2, "stderr": "gzip: stdin: unexpected end of file\n"}},
            "The Run:ai tarball cannot be read (gzip: stdin: unexpected end of file):"
            " a damaged download or not"
            " a .tar.gz.",
        ),
        (
            {"tarball_sha256": "cd" * 32},
            f"The Run:ai tarball has sha256 {SHA}, not {'cd' * 32} (runai_airgapped_tar_sha256): a damaged or"
            " different file.",
        ),
        (
            {"version": ""},
            "The Run:ai tarball has no single deploy/runai-backend-VERSION.tgz:"
            " not a Run:ai air-gapped tarball.",
        ),
        (
            {"tarball_lines": [SHA, *LISTING[:-1]]},
            "The Run:ai tarball lacks deploy/prepare_installation.sh.",
        ),
        ({"domain": ""}, "runai_domain, the DNS name of the control plane, is not set."),
        ({"external_ips": []}, "runai_external_ip, the address the domain resolves to, is not set."),
        ({"external_ips": ["10.0.0.100", "runai"]}, "runai is not an IP address (runai_external_ip)."),
        (
            {"key_file": ""},
            "No certificate for runai.example.com: set runai_tls_cert_file, runai_tls_key_file and"
            " runai_ca_cert_file (files on the controller), or runai_tls_generate: true to make a CA and a"
            " certificate for it.",
        ),
        (
            {"tls_stat": [{"item": "/etc/runai/tls.crt", "stat": {"exists": False}}]},
            "The certificate file /etc/runai/tls.crt does not exist on the controller.",
        ),
        (
            {"nfs_server": "", "nfs_path": ""},
            "No storage for the control plane: set runai_nfs_server and runai_nfs_path,"
            " or runai_storage_class,"
            " or runai_local_storage_path (a directory on one node).",
        ),
        ({"local_storage_path": "srv/runai"}, "runai_local_storage_path=srv/runai must be an absolute path."),
        (
            {"admin_password": "short"},
            "runai_admin_password (from Ansible Vault) must be set, at least 8 characters and not the default"
            " password.",
        ),
        (
            {"admin_password": "password"},
            "runai_admin_password (from Ansible Vault) must be set, at least 8 characters and not the default"
            " password.",
        ),
    ],
)
def test_each_rule_gives_its_one_sentence(change, problem):
    assert problems({**GOOD, **change}) == [problem]


def test_generating_the_certificate_needs_no_files_and_other_storage_is_enough():
    generated = {**GOOD, "tls_generate": True, "cert_file": "", "key_file": "", "ca_file": "", "tls_stat": []}
    assert problems(generated) == []
    assert problems({**GOOD, "nfs_server": "", "storage_class": "fast"}) == []
    assert problems({**GOOD, "nfs_server": "", "local_storage_path": "/srv/runai"}) == []


def test_every_problem_is_reported_at_once_and_the_password_never_appears():
    found = problems({**GOOD, "tarball_stat": {}, "domain": "", "admin_password": "passwor"})
    assert len(found) == 3
    assert not any("passwor" in sentence.replace("password", "") for sentence in found)
