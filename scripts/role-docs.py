#!/usr/bin/env python3
"""The "Role variables" table of every role's README, generated from its meta/argument_specs.yml.

    python scripts/role-docs.py          rewrite the tables
    python scripts/role-docs.py --check  exit 1 naming each README whose table is not the generated one

The table sits between the two markers below, under "## Role variables"; everything else of a README is
written by hand. A variable's default is its argument spec's `default`, else the literal value of
defaults/main.yml, else "computed" (its description says from what). tests/unit/test_role_docs.py runs
the check in `make test`, and checks that every variable of defaults/main.yml has an argument spec.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BEGIN = (
    "<!-- Role variables: generated from meta/argument_specs.yml by scripts/role-docs.py. Do not edit. -->"
)
END = "<!-- End of the generated role variables. -->"
MARKUP = re.compile(r"\b[CIORV]\(([^)]*)\)")


def options(role: Path) -> dict[str, dict]:
    """Every option of every entry point of the role, the main one first, each once."""
    specs = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())["argument_specs"]
    merged: dict[str, dict] = {}
    for entry in sorted(specs, key=lambda name: name != "main"):
        for name, spec in (specs[entry].get("options") or {}).items():
            merged.setdefault(name, spec)
    return merged


def defaults(role: Path) -> dict:
    path = role / "defaults" / "main.yml"
    return (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}


def _code(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return "`" + text.replace("|", "\\|") + "`" if text != "" else "`''`"


def default_cell(name: str, spec: dict, role_defaults: dict) -> str:
    if "default" in spec:
        return _code(spec["default"])
    if name in role_defaults:
        value = role_defaults[name]
        if not (isinstance(value, str) and "{{" in value):
            return _code(value)
        return "computed"
    return "none (required)" if spec.get("required") else "unset"


def description_cell(spec: dict) -> str:
    text = spec.get("description") or ""
    text = " ".join(text) if isinstance(text, list) else str(text)
    text = MARKUP.sub(lambda match: f"`{match.group(1)}`", " ".join(text.split()))
    return text.replace("|", "\\|")


def table(role: Path) -> str:
    role_defaults = defaults(role)
    rows = ["| Variable | Type | Default | Description |", "| --- | --- | --- | --- |"]
    for name, spec in options(role).items():
        kind = spec.get("type", "str")
        if kind == "list" and spec.get("elements"):
            kind = f"list of {spec['elements']}"
        rows.append(
            f"| `{name}` | {kind} | {default_cell(name, spec, role_defaults)} | {description_cell(spec)} |"
        )
    return "\n".join([BEGIN, *rows, END])


def rewritten(readme: str, generated: str) -> str:
    """README with its generated block replaced; a README without one gets it under "## Role variables"
    in place of the table there (or at the end of that section's first paragraph)."""
    if BEGIN in readme and END in readme:
        start, end = readme.index(BEGIN), readme.index(END) + len(END)
        return readme[:start] + generated + readme[end:]
    heading = readme.find("\n## Role variables")
    if heading == -1:
        return readme.rstrip("\n") + "\n\n## Role variables\n\n" + generated + "\n"
    lines = readme[heading + 1 :].split("\n")
    rows = [i for i, line in enumerate(lines) if line.startswith("|")]
    first_table = []
    for i in rows:
        if not first_table or i == first_table[-1] + 1:
            first_table.append(i)
        else:
            break
    if first_table:
        lines[first_table[0] : first_table[-1] + 1] = [generated]
    else:
        lines[1:1] = ["", generated]
    return readme[: heading + 1] + "\n".join(lines)


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for role in sorted(
        path for path in (ROOT / "roles").iterdir() if (path / "meta" / "argument_specs.yml").exists()
    ):
        readme_path = role / "README.md"
        readme = readme_path.read_text() if readme_path.exists() else f"# {role.name}\n"
        new = rewritten(readme, table(role))
        if new != readme:
            stale.append(str(readme_path.relative_to(ROOT)))
            if not check:
                readme_path.write_text(new)
    if check and stale:
        print(
            "role-docs: the variables table is not the one meta/argument_specs.yml gives in: "
            + ", ".join(stale)
        )
        print("role-docs: run python scripts/role-docs.py")
        return 1
    if not check:
        print(f"role-docs: rewrote {len(stale)} README(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
