"""Role backup's program appliance-backup (roles/backup/files/appliance_backup.py): its archive format, with
the real openssl of this machine. What goes into an archive (etcdctl, helm, pg_dump on a real cluster) and
the restore are proven on the lab (tests/lab/test_backup.py).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import tarfile
from pathlib import Path

import pytest

from tests.conftest import PROJECT

PROGRAM = PROJECT / "roles" / "backup" / "files" / "appliance_backup.py"
spec = importlib.util.spec_from_file_location("appliance_backup", PROGRAM)
backup = importlib.util.module_from_spec(spec)
sys.modules["appliance_backup"] = backup
spec.loader.exec_module(backup)

PASSPHRASE = b"correct horse battery staple"
SNAPSHOT = os.urandom(300_000)


def make_archive(directory: Path, cluster: str = "lab", created: str = "20261203T101500Z") -> Path:
    """An archive as `take` writes it, of made-up members (an etcd snapshot, a CA, values)."""
    work = directory / f"work-{created}"
    work.mkdir()
    collector = backup.Collector(work / "archive.tar")
    collector.add_bytes("etcd/snapshot.db", SNAPSHOT)
    collector.add_bytes("pki/ca.crt", b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    collector.add_bytes("helm/runai-backend/runai-backend.values.yaml", b"global: {domain: runai.lab.test}\n")
    collector.finish(
        {
            "format": 1,
            "cluster": cluster,
            "created": created,
            "node": "cp-1",
            "kubernetes_version": "v1.23.5",
            "etcd": {
                "status": {"hash": 1, "revision": 1190, "totalKey": 1200, "totalSize": 300_000},
                "member": "cp-1",
                "peer_url": "https://172.28.0.10:2380",
            },
            "ca_sha256": "00" * 32,
            "helm_releases": [{"name": "runai-backend", "namespace": "runai-backend", "revision": 1}],
            "runai_database": None,
        }
    )
    archive = directory / f"{cluster}-{created}.backup"
    backup.encrypt(work / "archive.tar", archive, PASSPHRASE, cluster, created)
    return archive


def member_offset(archive: Path, name: str) -> int:
    """The offset in ARCHIVE of the middle of member NAME's content (CTR keeps plaintext offsets)."""
    _, header_length = backup.read_header(archive)
    plain = archive.parent / "plain.tar"
    backup.decrypt(archive, header_length, PASSPHRASE, plain)
    with tarfile.open(plain) as tar:
        member = tar.getmember(name)
    plain.unlink()
    # openssl's own header (Salted__ and 8 bytes of salt) precedes the encrypted tar.
    return header_length + 16 + member.offset_data + member.size // 2


def test_an_archive_is_0600_and_opens_with_its_passphrase(tmp_path):
    archive = make_archive(tmp_path)
    assert archive.stat().st_mode & 0o777 == 0o600
    assert SNAPSHOT not in archive.read_bytes()  # encrypted
    work = tmp_path / "verify"
    work.mkdir()
    manifest, tar_path = backup.verify(archive, PASSPHRASE, work)
    assert manifest["cluster"] == "lab" and manifest["created"] == "20261203T101500Z"
    assert sorted(manifest["members"]) == [
        "etcd/snapshot.db",
        "helm/runai-backend/runai-backend.values.yaml",
        "pki/ca.crt",
    ]
    out = tmp_path / "out"
    out.mkdir()
    backup.extract(tar_path, out)
    assert (out / "etcd" / "snapshot.db").read_bytes() == SNAPSHOT


def test_a_wrong_passphrase_is_one_clear_line(tmp_path):
    archive = make_archive(tmp_path)
    wrong = r"^the passphrase does not open lab-.*wrong backup_passphrase"
    with pytest.raises(backup.BackupError, match=wrong):
        backup.verify(archive, b"not the passphrase at all", tmp_path)


def test_one_altered_byte_is_refused_naming_its_member(tmp_path):
    archive = make_archive(tmp_path)
    offset = member_offset(archive, "etcd/snapshot.db")
    data = bytearray(archive.read_bytes())
    data[offset] ^= 0x01
    archive.write_bytes(bytes(data))
    with pytest.raises(backup.BackupError, match=r"member etcd/snapshot.db does not match its sha256"):
        backup.verify(archive, PASSPHRASE, tmp_path)


def test_an_altered_authentication_code_is_refused(tmp_path):
    archive = make_archive(tmp_path)
    data = bytearray(archive.read_bytes())
    data[-1] ^= 0x80
    archive.write_bytes(bytes(data))
    with pytest.raises(backup.BackupError, match="authentication code does not match"):
        backup.verify(archive, PASSPHRASE, tmp_path)


def test_a_truncated_archive_and_a_file_that_is_none_are_refused(tmp_path):
    archive = make_archive(tmp_path)
    archive.write_bytes(archive.read_bytes()[:-5000])
    with pytest.raises(backup.BackupError, match=r"lab-20261203T101500Z\.backup"):
        backup.verify(archive, PASSPHRASE, tmp_path)
    other = tmp_path / "notes.backup"
    other.write_text("hello\n")
    with pytest.raises(backup.BackupError, match="is not an appliance backup archive"):
        backup.verify(other, PASSPHRASE, tmp_path)


def test_the_passphrase_is_read_from_a_file_and_never_short(tmp_path):
    good = tmp_path / "passphrase"
    good.write_bytes(PASSPHRASE + b"\n")
    assert backup.read_passphrase(str(good)) == PASSPHRASE
    short = tmp_path / "short"
    short.write_bytes(b"secret\n")
    with pytest.raises(backup.BackupError, match="shorter than 12"):
        backup.read_passphrase(str(short))


def test_retention_keeps_the_newest_of_each_cluster(tmp_path):
    for created in ("20261201T023000Z", "20261202T023000Z", "20261203T023000Z"):
        make_archive(tmp_path, created=created)
    make_archive(tmp_path, cluster="other", created="20261130T023000Z")
    removed = backup.prune(tmp_path, "lab", keep=2)
    assert removed == ["lab-20261201T023000Z.backup"]
    listed = [(entry["cluster"], entry["created"]) for entry in backup.archives(tmp_path)]
    assert listed == [("other", "20261130T023000Z"), ("lab", "20261202T023000Z"), ("lab", "20261203T023000Z")]


def test_the_command_line_verifies_with_the_passphrase_on_stdin(tmp_path, monkeypatch, capsys):
    archive = make_archive(tmp_path)
    passphrase = tmp_path / "passphrase"
    passphrase.write_bytes(PASSPHRASE)
    assert backup.main(["verify", str(archive), "--passphrase-file", str(passphrase)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["ok"] is True and "etcd/snapshot.db" in result["manifest"]["members"]
    passphrase.write_bytes(b"a wrong passphrase")
    assert backup.main(["verify", str(archive), "--passphrase-file", str(passphrase)]) == 1
    assert "wrong backup_passphrase" in json.loads(capsys.readouterr().out)["error"]
