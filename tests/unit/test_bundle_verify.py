"""plugins/modules/bundle_verify.py: which files of a bundle copy it names missing, altered or extra.
Role bundle_serve runs it on real copies in tests/lab/test_bundle_serve.py."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import yaml

MODULE = Path(__file__).resolve().parents[2] / "plugins" / "modules" / "bundle_verify.py"
_spec = importlib.util.spec_from_file_location("bundle_verify", MODULE)
bundle_verify = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bundle_verify)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_names_missing_altered_and_extra_files(tmp_path):
    (tmp_path / "debs").mkdir()
    (tmp_path / "images").mkdir()
    (tmp_path / "manifest.json").write_bytes(b"{}")
    (tmp_path / "debs" / "a.deb").write_bytes(b"a")
    (tmp_path / "images" / "big.tar").write_bytes(b"x" * (3 << 20))
    (tmp_path / "images" / "changed.tar").write_bytes(b"changed")
    (tmp_path / "images" / "stray.tar").write_bytes(b"stray")
    (tmp_path / "images" / "link").symlink_to(tmp_path / "debs")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "not-a-part").write_bytes(b"ignored")
    files = {
        "manifest.json": sha256(b"{}"),
        "debs/a.deb": sha256(b"a"),
        "debs/gone.deb": sha256(b"gone"),
        "images/big.tar": sha256(b"x" * (3 << 20)).upper(),
        "images/changed.tar": sha256(b"original"),
    }
    result = bundle_verify.compare(str(tmp_path), files, ["debs", "images"])
    assert result == {
        "missing": ["debs/gone.deb"],
        "altered": ["images/changed.tar"],
        "extra": ["images/link", "images/stray.tar"],
    }


def test_a_copy_that_does_not_exist_misses_every_file(tmp_path):
    files = {"manifest.json": sha256(b"{}"), "debs/a.deb": sha256(b"a")}
    result = bundle_verify.compare(str(tmp_path / "absent"), files, ["debs"])
    assert result == {"missing": ["debs/a.deb", "manifest.json"], "altered": [], "extra": []}


def test_an_equal_copy_has_no_difference(tmp_path):
    (tmp_path / "debs").mkdir()
    (tmp_path / "debs" / "a.deb").write_bytes(b"a")
    result = bundle_verify.compare(str(tmp_path), {"debs/a.deb": sha256(b"a")}, ["debs"])
    assert result == {"missing": [], "altered": [], "extra": []}


def test_documentation_parses():
    documented = yaml.safe_load(bundle_verify.DOCUMENTATION)["options"]
    assert set(documented) == {"path", "files", "parts"}
    assert yaml.safe_load(bundle_verify.EXAMPLES)
    assert set(yaml.safe_load(bundle_verify.RETURN)) == {"missing", "altered", "extra"}
