"""Every plugin's DOCUMENTATION, EXAMPLES and RETURN parse as YAML, as ansible-doc reads them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

PROJECT = Path(__file__).resolve().parents[2]
PLUGINS = sorted(path for path in (PROJECT / "plugins").rglob("*.py") if path.name != "__init__.py")
BLOCKS = ("DOCUMENTATION", "EXAMPLES", "RETURN")


def doc_blocks(path: Path) -> dict[str, str]:
    blocks = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            name = getattr(node.targets[0], "id", "")
            if name in BLOCKS:
                blocks[name] = node.value.value
    return blocks


@pytest.mark.parametrize("path", PLUGINS, ids=lambda path: str(path.relative_to(PROJECT)))
def test_the_documentation_blocks_are_yaml(path):
    blocks = doc_blocks(path)
    if "modules" in path.parts:
        assert set(blocks) == set(BLOCKS), f"{path.name} lacks {set(BLOCKS) - set(blocks)}"
    for name, text in blocks.items():
        parsed = yaml.safe_load(text)
        assert parsed, f"{path.name}: {name} is empty"
    if "DOCUMENTATION" in blocks:
        assert yaml.safe_load(blocks["DOCUMENTATION"]).get("short_description")
