"""The signature of the bundle's apt repository: debs/InRelease and debs/Release.gpg, made with gpg, and
debs/appliance-archive-keyring.gpg, the public key the nodes trust for that source alone (signed-by).

The key is an OpenPGP secret key without a passphrase, in a file: the operator's (`bundle build
--signing-key FILE`) or one generated once per build machine (ed25519, in the state directory, 0600) and
reused by every later build, so nodes keep trusting the same key across bundle upgrades. gpg runs in a
throwaway home directory with that key imported, never in the user's own keyring.

The signatures are reproducible: ed25519 signatures are deterministic and gpg signs at a fixed time
(`--faked-system-time`): the bundle's SOURCE_DATE_EPOCH, or the key's creation when that is later (apt's
gpgv refuses a signature older than its key). So the same Release and key give the same bytes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from appliance import paths
from appliance.errors import ApplianceError

KEYRING = "appliance-archive-keyring.gpg"
UID = "appliance bundle signing key <bundle-signing@appliance.invalid>"


def default_key_file() -> Path:
    return paths.state_dir() / "bundle-signing" / "secret-key.asc"


def ensure_default_key(log: Callable[[str], None]) -> Path:
    """The build machine's own signing key, generated at its first bundle build."""
    key = default_key_file()
    if key.exists():
        return key
    key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    log(f"signing: generating this machine's bundle signing key (ed25519) in {key}")
    with _home() as home:
        _gpg(home, "--quick-generate-key", UID, "ed25519", "sign", "never", what="generating the key")
        secret = _gpg(home, "--armor", "--export-secret-keys", what="exporting the key")
    partial = key.with_suffix(".partial")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(secret)
    partial.rename(key)
    return key


def sign_repository(debs_dir: Path, key_file: Path, epoch: int) -> str:
    """Sign DEBS_DIR/Release (InRelease, Release.gpg) with the secret key in KEY_FILE at time EPOCH, and
    write its public key beside them; return the key's fingerprint."""
    if not key_file.is_file():
        raise ApplianceError(f"--signing-key {key_file}: no such file (an OpenPGP secret key, unprotected)")
    with _home() as home:
        _gpg(home, "--import", str(key_file), what=f"importing the signing key {key_file}")
        fingerprint, created = _signing_key(home, key_file)
        when = max(epoch, created)
        common = ["--faked-system-time", f"{when}!", "--local-user", fingerprint, "--digest-algo", "SHA512"]
        release = str(debs_dir / "Release")
        _gpg(home, *common, "--clearsign", "--output", str(debs_dir / "InRelease"), release, what="signing")
        _gpg(
            home, *common, "--detach-sign", "--output", str(debs_dir / "Release.gpg"), release, what="signing"
        )
        (debs_dir / KEYRING).write_bytes(_gpg(home, "--export", fingerprint, what="exporting the public key"))
    return fingerprint


def _signing_key(home: Path, key_file: Path) -> tuple[str, int]:
    """The fingerprint and creation time (seconds) of the one secret key in HOME that can sign."""
    listing = _gpg(home, "--with-colons", "--list-secret-keys", what="listing the signing key").decode()
    fingerprints = []
    records = listing.splitlines()
    for index, line in enumerate(records):
        fields = line.split(":")
        if fields[0] == "sec" and "s" in fields[11].lower() and index + 1 < len(records):
            following = records[index + 1].split(":")
            if following[0] == "fpr":
                fingerprints.append((following[9], int(fields[5])))
    if len(fingerprints) != 1:
        raise ApplianceError(
            f"--signing-key {key_file}: holds {len(fingerprints)} secret signing keys; give a file with one"
        )
    return fingerprints[0]


class _home:
    """A throwaway GNUPGHOME (0700), its agent stopped on the way out."""

    def __enter__(self) -> Path:
        self.path = Path(tempfile.mkdtemp(prefix="appliance-gnupg-"))
        self.path.chmod(0o700)
        return self.path

    def __exit__(self, *exc: object) -> None:
        if shutil.which("gpgconf"):
            subprocess.run(
                ["gpgconf", "--homedir", str(self.path), "--kill", "all"], capture_output=True, check=False
            )
        shutil.rmtree(self.path, ignore_errors=True)


def _gpg(home: Path, *args: str, what: str) -> bytes:
    if shutil.which("gpg") is None:
        raise ApplianceError("gpg is not installed; run `make setup` (Debian's gnupg)")
    result = subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--yes", "--no-tty", "--pinentry-mode", "loopback",
         "--passphrase", "", *args],
        capture_output=True, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        tail = result.stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise ApplianceError(f"gpg: {what} failed: {' | '.join(tail)}")
    return result.stdout
