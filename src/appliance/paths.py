"""Where the project, its caches and the lab's state live."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from appliance.errors import UsageError


def project_root() -> Path:
    """The checkout holding site.yml: $APPLIANCE_PROJECT_DIR, else the source tree of this package, else
    the project a bundle's controller/install.sh unpacked beside this virtualenv (share/appliance)."""
    explicit = os.environ.get("APPLIANCE_PROJECT_DIR")
    candidates = [Path(explicit)] if explicit else []
    candidates += [Path(__file__).resolve().parents[2], Path(sys.prefix) / "share" / "appliance"]
    candidates += [Path.cwd(), *Path.cwd().parents]
    for candidate in candidates:
        if (candidate / "site.yml").is_file() and (candidate / "ansible.cfg").is_file():
            return candidate
    raise UsageError(
        "cannot find the project (a directory with site.yml and ansible.cfg); "
        "run from the checkout or set APPLIANCE_PROJECT_DIR"
    )


def cache_dir() -> Path:
    """Build caches, outside the work tree so clean clones and CI reuse them."""
    base = os.environ.get("APPLIANCE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "appliance"
    )
    return Path(base)


def state_dir() -> Path:
    """Per-machine state that must survive a clean clone: the lab's SSH key and known_hosts."""
    base = os.environ.get("APPLIANCE_STATE_DIR") or os.path.join(
        os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state", "appliance"
    )
    return Path(base)


def lab_bundle_dir() -> Path:
    """The bundle every lab serves (`appliance lab bundle` builds it; the lab inventory points at it)."""
    return state_dir() / "bundle"
