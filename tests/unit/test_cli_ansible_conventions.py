"""The CLI keeps Ansible's conventions, on real ansible-playbook runs against local hosts: the inventory
Ansible itself would take ($ANSIBLE_INVENTORY, ansible.cfg's), vault ids and a vault password asked once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ansible.parsing.vault import VaultLib, VaultSecret

from tests.conftest import BIN, PROJECT

FAIL_PLAYBOOK = str(PROJECT / "tests" / "playbooks" / "fail_on_one_host.yml")
VAULT_PASSWORD = "vault-pass-7f3a91"


@pytest.fixture
def local_inventory(tmp_path: Path) -> Path:
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(
        "all:\n"
        f"  vars: {{ansible_connection: local, ansible_python_interpreter: {sys.executable}}}\n"
        "  hosts: {cp-1: {}, worker-1: {}, worker-2: {}}\n"
    )
    return inventory


def appliance(*args: str, env: dict[str, str] | None = None, stdin: str = "") -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in ("ANSIBLE_INVENTORY", "ANSIBLE_CONFIG")}
    environment["APPLIANCE_LAB_NAME"] = "no-such-lab"  # no lab inventory to fall back on
    return subprocess.run(
        [str(BIN / "appliance"), *args],
        cwd=PROJECT,
        env={**environment, **(env or {})},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def hosts_run(result: subprocess.CompletedProcess) -> set[str]:
    assert result.returncode == 0, result.stdout + result.stderr
    return set(json.loads(result.stdout)["hosts"])


def test_without_i_ansible_inventory_is_the_inventory(local_inventory):
    result = appliance(
        "run",
        FAIL_PLAYBOOK,
        "-e",
        "fail_on=nobody",
        "--json",
        env={"ANSIBLE_INVENTORY": str(local_inventory)},
    )
    assert hosts_run(result) == {"cp-1", "worker-1", "worker-2"}


def test_without_i_the_inventory_of_the_ansible_cfg_in_effect_relative_to_it(local_inventory, tmp_path):
    config = tmp_path / "ansible.cfg"
    config.write_text(
        (PROJECT / "ansible.cfg").read_text().replace("[defaults]\n", "[defaults]\ninventory = hosts.yml\n")
    )
    config.write_text(config.read_text().replace("./", f"{PROJECT}/"))  # its paths were the project's
    result = appliance(
        "run", FAIL_PLAYBOOK, "-e", "fail_on=nobody", "--json", env={"ANSIBLE_CONFIG": str(config)}
    )
    assert hosts_run(result) == {"cp-1", "worker-1", "worker-2"}


def test_no_inventory_anywhere_is_a_usage_error_naming_every_place():
    result = appliance("run", FAIL_PLAYBOOK)
    assert result.returncode == 2
    assert "ANSIBLE_INVENTORY or ansible.cfg's inventory" in result.stderr


@pytest.fixture
def vaulted(tmp_path: Path) -> Path:
    """A playbook that needs a vaulted variable (encrypted with VAULT_PASSWORD)."""
    vault = VaultLib([("default", VaultSecret(VAULT_PASSWORD.encode()))])
    (tmp_path / "secret.yml").write_bytes(vault.encrypt(b"secret_value: sealed\n"))
    playbook = tmp_path / "vaulted.yml"
    playbook.write_text(
        "- name: Read a vaulted variable\n  hosts: all\n  gather_facts: false\n  vars_files: [secret.yml]\n"
        "  tasks:\n    - name: It decrypted\n      ansible.builtin.assert: {that: secret_value == 'sealed'}\n"
    )
    return playbook


def test_a_vault_id_and_a_vault_password_asked_once_open_vaulted_variables(
    local_inventory, vaulted, tmp_path
):
    password_file = tmp_path / "vault-password"
    password_file.write_text(VAULT_PASSWORD + "\n")
    by_file = appliance(
        "--vault-id", str(password_file), "run", str(vaulted), "-i", str(local_inventory), "--json"
    )
    assert hosts_run(by_file) == {"cp-1", "worker-1", "worker-2"}

    asked = appliance(
        "--ask-vault-pass",
        "run",
        str(vaulted),
        "-i",
        str(local_inventory),
        "--json",
        stdin=VAULT_PASSWORD + "\n",
    )
    assert hosts_run(asked) == {"cp-1", "worker-1", "worker-2"}
    log = Path(json.loads(asked.stdout)["log"])
    assert VAULT_PASSWORD not in log.read_text() and VAULT_PASSWORD not in asked.stdout + asked.stderr

    without = appliance("run", str(vaulted), "-i", str(local_inventory), "--json")
    assert without.returncode != 0
