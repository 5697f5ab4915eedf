"""Filter runai_backend_problems: role runai_backend's rules for its settings and the Run:ai tarball.

roles/runai_backend/tasks/validate.yml reads the tarball (its sha256 and listing) and the certificate
files on the controller, then fails once with every sentence this returns, before any change.
tests/unit/test_runai_backend_rules.py has a case for every rule.
"""

from __future__ import annotations

DOCUMENTATION = r"""
name: runai_backend_problems
author: Appliance toolkit maintainers (@appliance-maintainers)
short_description: Every problem of the Run:ai control plane's settings and tarball, each a sentence
description:
  - Judges what role runai_backend read on the controller (the tarball's stat, sha256 and listing, the
    certificate files' stat) and its variables; returns the problems, an empty list when there is none.
positional: _input
options:
  _input:
    description:
      - A dict with C(tarball), C(tarball_stat), C(tarball_read), C(tarball_lines), C(tarball_sha256),
        C(version), C(domain), C(external_ips), C(tls_generate), C(cert_file), C(key_file), C(ca_file),
        C(tls_stat), C(nfs_server), C(require_sha256) (the tarball's sha256 must be given),
        C(nfs_path), C(storage_class), C(local_storage_path), C(admin_password).
    type: dict
    required: true
"""

from ansible_collections.appliance.runai.plugins.filter.preflight import is_ip


def required_members(version: str) -> list[str]:
    """What a Run:ai air-gapped tarball of VERSION holds under deploy/."""
    return [
        f"deploy/runai-backend-{version}.tgz",
        f"deploy/runai-cluster-{version}.tgz",
        "deploy/images.tar",
        "deploy/images.txt",
        "deploy/prepare_installation.sh",
    ]


def tarball_problems(facts: dict) -> list[str]:
    stat = facts.get("tarball_stat") or {}
    if not stat.get("isreg"):
        return [
            f"The Run:ai tarball {facts.get('tarball')} (runai_airgapped_tar)"
            " does not exist on the controller."
        ]
    read = facts.get("tarball_read") or {}
    lines = facts.get("tarball_lines") or []
    if read.get("rc", 0) != 0 or not lines:
        return [
            f"The Run:ai tarball cannot be read ({(read.get('stderr') or '').strip()}):"
            " a damaged download or not"
            " a .tar.gz."
        ]
    checksum, expected = lines[0], (facts.get("tarball_sha256") or "").lower()
    if not expected and facts.get("require_sha256"):
        return [
            "runai_airgapped_tar_sha256 is not set: name the Run:ai tarball by its sha256, as Run:ai"
            f" published it with the download (`sha256sum {facts.get('tarball')}` on the machine it was"
            " downloaded to prints the file's), in the inventory."
        ]
    if expected and checksum != expected:
        return [
            f"The Run:ai tarball has sha256 {checksum}, not {facts.get('tarball_sha256')}"
            " (runai_airgapped_tar_sha256): a damaged or different file."
        ]
    version = facts.get("version") or ""
    if not version:
        return [
            "The Run:ai tarball has no single deploy/runai-backend-VERSION.tgz:"
            " not a Run:ai air-gapped tarball."
        ]
    members = [line.removeprefix("./") for line in lines[1:]]
    return [
        f"The Run:ai tarball lacks {member}." for member in required_members(version) if member not in members
    ]


def problems(facts: dict) -> list[str]:
    """Every problem, each a sentence, in the order an operator would fix them."""
    found = tarball_problems(facts)
    domain = facts.get("domain") or ""
    if not domain:
        found.append("runai_domain, the DNS name of the control plane, is not set.")
    ips = facts.get("external_ips") or []
    if not ips:
        found.append("runai_external_ip, the address the domain resolves to, is not set.")
    found += [f"{ip} is not an IP address (runai_external_ip)." for ip in ips if not is_ip(ip)]
    if not facts.get("tls_generate"):
        if not (facts.get("cert_file") and facts.get("key_file") and facts.get("ca_file")):
            found.append(
                f"No certificate for {domain or 'the domain'}: set runai_tls_cert_file,"
                " runai_tls_key_file and runai_ca_cert_file (files on the controller),"
                " or runai_tls_generate: true to make a CA and a"
                " certificate for it."
            )
        found += [
            f"The certificate file {result.get('item')} does not exist on the controller."
            for result in facts.get("tls_stat") or []
            if not (result.get("stat") or {}).get("isreg")
        ]
    local = facts.get("local_storage_path") or ""
    if not ((facts.get("nfs_server") and facts.get("nfs_path")) or facts.get("storage_class") or local):
        found.append(
            "No storage for the control plane: set runai_nfs_server and runai_nfs_path,"
            " or runai_storage_class,"
            " or runai_local_storage_path (a directory on one node)."
        )
    if local and not local.startswith("/"):
        found.append(f"runai_local_storage_path={local} must be an absolute path.")
    password = facts.get("admin_password") or ""
    if len(password) < 8 or password == "password":
        found.append(
            "runai_admin_password (from Ansible Vault) must be set, at least 8 characters and not the default"
            " password."
        )
    return found


class FilterModule:
    def filters(self):
        return {"runai_backend_problems": problems}
