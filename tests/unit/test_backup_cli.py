"""`appliance backup list`, `backup verify` and the refusals of `appliance restore` that come before any
change, as real ansible-playbook runs of playbooks/backup_*.yml and restore.yml against a local host that
stands in for the first control-plane node (no lab needed). Taking a backup and restoring one need a
cluster: tests/lab/test_site.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.unit.test_backup_archive import PASSPHRASE, make_archive, member_offset


@pytest.fixture
def appliance_host(tmp_path: Path) -> tuple[Path, Path]:
    """An inventory whose cp-1 is this machine, with its backup_dir in TMP; and that directory."""
    backup_dir = tmp_path / "node-backups"
    backup_dir.mkdir()
    inventory = tmp_path / "hosts.yml"
    variables = {
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable,
        "backup_dir": str(backup_dir),
        "backup_passphrase": PASSPHRASE.decode(),
    }
    inventory.write_text(
        "all:\n"
        f"  vars: {json.dumps(variables)}\n"
        "  children:\n"
        "    k8s_cluster: {children: {control_plane: {}, workers: {}}}\n"
        "    control_plane: {hosts: {cp-1: {}}}\n"
        "    workers: {hosts: {}}\n"
    )
    return inventory, backup_dir


def summary_of(result) -> dict:
    return json.loads(result.stdout)


def test_verify_reports_a_sound_archive_on_the_controller_and_by_name_on_the_node(
    cli, appliance_host, tmp_path
):
    inventory, backup_dir = appliance_host
    archive = make_archive(backup_dir)
    result = cli("backup", "verify", str(archive), "-i", str(inventory), "--json")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    report = summary_of(result)["report"]
    assert (
        report[0] == f"{archive.name}: sound (passphrase, authentication code, 3 members match the manifest)"
    )
    result = cli("backup", "verify", archive.name, "-i", str(inventory), "--json")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr


def test_verify_names_the_altered_member_and_says_a_wrong_passphrase_in_one_line(cli, appliance_host):
    inventory, backup_dir = appliance_host
    archive = make_archive(backup_dir)
    data = bytearray(archive.read_bytes())
    data[member_offset(archive, "etcd/snapshot.db")] ^= 0x04
    archive.write_bytes(bytes(data))
    result = cli("backup", "verify", str(archive), "-i", str(inventory), "--json")
    assert result.returncode == 1
    (failure,) = summary_of(result)["failures"]
    assert "member etcd/snapshot.db does not match its sha256" in failure["message"]
    archive = make_archive(backup_dir, created="20261203T111500Z")
    result = cli(
        "backup", "verify", str(archive), "-i", str(inventory), "--json", "-e", "backup_passphrase=short"
    )
    assert result.returncode == 1
    (failure,) = summary_of(result)["failures"]
    assert "backup_passphrase must be set, one line of 12 characters or more" in failure["message"]
    result = cli(
        "backup",
        "verify",
        str(archive),
        "-i",
        str(inventory),
        "--json",
        "-e",
        "backup_passphrase=a-wrong-passphrase",
    )
    (failure,) = summary_of(result)["failures"]
    assert failure["message"] == f"the passphrase does not open {archive.name} (wrong backup_passphrase)"
    # The passphrases never reach the log.
    log = Path(summary_of(result)["log"]).read_text()
    assert PASSPHRASE.decode() not in log and "a-wrong-passphrase" not in log


def test_a_missing_archive_is_named(cli, appliance_host):
    inventory, _ = appliance_host
    result = cli("backup", "verify", "lab-20261203T000000Z.backup", "-i", str(inventory), "--json")
    assert result.returncode == 1
    (failure,) = summary_of(result)["failures"]
    assert failure["message"].startswith(
        "No archive lab-20261203T000000Z.backup: neither a file on the controller"
    )


def test_list_shows_the_node_s_and_the_controller_s_archives(cli, appliance_host, tmp_path):
    inventory, backup_dir = appliance_host
    make_archive(backup_dir, created="20261201T023000Z")
    make_archive(backup_dir, created="20261202T023000Z")
    here = tmp_path / "here"
    here.mkdir()
    make_archive(here, created="20261202T080000Z")
    result = cli("backup", "list", "--out", str(here), "-i", str(inventory), "--json")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    archives = summary_of(result)["data"]["archives"]
    assert [a["name"] for a in archives["cp-1"]] == [
        "lab-20261201T023000Z.backup",
        "lab-20261202T023000Z.backup",
    ]
    assert [a["name"] for a in archives["controller"]] == ["lab-20261202T080000Z.backup"]


def test_restore_refuses_a_damaged_archive_before_any_change(cli, appliance_host):
    inventory, backup_dir = appliance_host
    archive = make_archive(backup_dir)
    data = bytearray(archive.read_bytes())
    data[member_offset(archive, "pki/ca.crt")] ^= 0x10
    archive.write_bytes(bytes(data))
    result = cli("restore", str(archive), "--force", "-i", str(inventory), "--json")
    assert result.returncode == 1
    summary = summary_of(result)
    assert summary["hosts"]["cp-1"]["changed"] == 0
    (failure,) = summary["failures"]
    assert "member pki/ca.crt does not match its sha256" in failure["message"]


def test_backup_subcommand_options_go_after_the_subcommand(cli):
    result = cli("backup", "--out", "/tmp", "list")
    assert result.returncode == 2
    assert "put the options after `backup list`" in result.stderr
