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

from appliance import runner
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


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("maintenance_node=worker-1", "maintenance_node=worker-1"),
        ("backup_passphrase=x y=2", "backup_passphrase=REDACTED y=2"),
        ('{"api_token": "x", "n": 1}', '{"api_token": "REDACTED", "n": 1}'),
        ("{secret: x}", "REDACTED"),
        ("@vars.yml", "@vars.yml"),
    ],
)
def test_the_recorded_command_keeps_no_secret_looking_value(given, kept):
    assert runner.scrub_extra_var(given) == kept


def test_runs_older_than_the_days_kept_are_pruned(tmp_path):
    for name, age_days in (("new-run", 1), ("old-run", 40), ("old.log", 31)):
        path = tmp_path / name
        path.mkdir() if "." not in name else path.write_text("x")
        os.utime(path, (1e9 - age_days * 86400, 1e9 - age_days * 86400))
    removed = runner.prune_runs(tmp_path, 30, now=1e9)
    assert sorted(p.name for p in removed) == ["old-run", "old.log"]
    assert [p.name for p in tmp_path.iterdir()] == ["new-run"]
    for number in range(5):  # and the oldest beyond the most kept
        (tmp_path / f"run-{number}").mkdir()
        os.utime(tmp_path / f"run-{number}", (1e9 - number, 1e9 - number))
    runner.prune_runs(tmp_path, 30, now=1e9, most=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run-0", "run-1", "run-2"]


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


def test_each_run_keeps_its_artifacts_with_no_secret_and_old_runs_are_pruned(local_inventory, tmp_path):
    state = tmp_path / "state"
    old = state / "runs" / "20200101T000000-site-abcd"
    old.mkdir(parents=True)
    os.utime(old, (0, 0))
    result = appliance(
        "run", FAIL_PLAYBOOK, "-i", str(local_inventory), "--json",
        "-e", "fail_on=nobody backup_passphrase=pass-8e1c",
        "-e", json.dumps({"runai_admin_password": "pass-9f2d", "maintenance_node": "worker-1"}),
        env={"APPLIANCE_STATE_DIR": str(state), "SOME_TOKEN": "pass-0b7e"},
    )  # fmt: skip
    assert hosts_run(result) == {"cp-1", "worker-1", "worker-2"}
    (run,) = (state / "runs").iterdir()  # the run of 2020 is gone
    assert Path(json.loads(result.stdout)["log"]) == run / "stdout"
    assert (run / "rc").read_text() == "0" and list((run / "job_events").glob("*.json"))
    assert oct((state / "runs").stat().st_mode & 0o777) == "0o700"
    recorded = json.loads((run / "command").read_text())
    assert set(recorded) == {"command", "cwd"}  # not the environment
    argv = recorded["command"]
    assert "fail_on=nobody backup_passphrase=REDACTED" in argv
    assert json.loads(argv[argv.index("-e", argv.index("-e") + 1) + 1]) == {
        "runai_admin_password": "REDACTED",
        "maintenance_node": "worker-1",
    }
    for path in run.rglob("*"):
        if path.is_file():
            assert "pass-" not in path.read_text(errors="replace"), path
