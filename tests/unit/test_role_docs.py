"""Every role has a README and meta/argument_specs.yml; every variable of its defaults has an argument
spec; and the README's variables table is the one scripts/role-docs.py generates from the specs."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from tests.conftest import PROJECT

ROLES = sorted(path for path in (PROJECT / "roles").iterdir() if path.is_dir())


@pytest.mark.parametrize("role", ROLES, ids=lambda path: path.name)
def test_each_role_has_a_readme_and_argument_specs_covering_its_defaults(role):
    assert (role / "README.md").is_file()
    specs = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())["argument_specs"]
    documented = {name for entry in specs.values() for name in (entry.get("options") or {})}
    defaults_file = role / "defaults" / "main.yml"
    defaults = (yaml.safe_load(defaults_file.read_text()) or {}) if defaults_file.exists() else {}
    assert set(defaults) <= documented, sorted(set(defaults) - documented)
    for name, spec in (
        entry for specs_entry in specs.values() for entry in (specs_entry.get("options") or {}).items()
    ):
        assert spec.get("description"), f"{role.name}: {name} has no description"


def test_every_readme_table_is_generated_from_the_argument_specs():
    result = subprocess.run(
        [sys.executable, str(PROJECT / "scripts" / "role-docs.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
