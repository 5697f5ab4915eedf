#!/usr/bin/python
"""Ansible module apt_get: install Debian packages with apt-get itself, without python3-apt."""

from __future__ import annotations

DOCUMENTATION = r"""
module: apt_get
short_description: Install Debian packages with apt-get, as an operator would, without python3-apt
description:
  - Installs the named packages that dpkg does not show installed (at the version asked, for
    C(NAME=VERSION)) in one C(apt-get install) transaction (no recommends; the configuration files already
    on the node are kept), waiting up to a minute for another apt or dpkg to finish. Like
    M(ansible.builtin.apt) with C(state=present), it never upgrades a package that is installed.
  - Why not M(ansible.builtin.apt) - on a fresh node it first installs python3-apt, and each call opens
    apt's cache in Python; on the lab, three such tasks on three nodes took 42 s where three apt-get
    transactions took 29 s (benchmarks/site.py, issue 5). The roles call it only for the packages that
    dpkg does not show installed, so a re-run never runs it.
  - Reports C(changed) when apt-get installed, upgraded, downgraded or removed a package (an index update
    alone is no change).
options:
  name:
    description: Packages, each C(NAME) or C(NAME=VERSION).
    type: list
    elements: str
    required: true
  update_cache:
    description: Run C(apt-get update) first (when the index is older than O(cache_valid_time)).
    type: bool
    default: false
  cache_valid_time:
    description: Seconds an index stays fresh enough to skip the update; 0 updates every time.
    type: int
    default: 0
  allow_change_held_packages:
    description: Let apt-get change packages that are held (C(--allow-change-held-packages)).
    type: bool
    default: false
  allow_downgrade:
    description: Let apt-get install an older version than the installed one (C(--allow-downgrades)).
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    description: Reports what it would change and changes nothing.
    details: apt-get simulates (C(--simulate)) and reports whether it would change anything.
  diff_mode:
    support: none
    description: Returns no diff.
author:
  - Appliance toolkit maintainers (@appliance-maintainers)
"""

EXAMPLES = r"""
- name: Install the base packages
  appliance.runai.apt_get:
    name: [curl, conntrack]
  when: missing | length > 0
"""

RETURN = r"""
stdout:
  description: What apt-get printed.
  returned: always
  type: str
updated:
  description: Whether apt-get update ran.
  returned: always
  type: bool
"""

import os
import re
import time

from ansible.module_utils.basic import AnsibleModule

# apt-get's summary line: "2 upgraded, 5 newly installed, 1 downgraded, 0 to remove and 3 not upgraded."
SUMMARY = re.compile(
    r"^(\d+) upgraded, (\d+) newly installed, (?:(\d+) downgraded, )?(\d+) to remove", re.MULTILINE
)
OPTIONS = [
    "-y",
    "-q",
    "--no-install-recommends",
    "-o",
    "Dpkg::Options::=--force-confdef",
    "-o",
    "Dpkg::Options::=--force-confold",
    "-o",
    "DPkg::Lock::Timeout=60",
]
# apt-get update records its success here (Debian's apt); the package cache is the fallback.
INDEX_STAMPS = ("/var/lib/apt/periodic/update-success-stamp", "/var/cache/apt/pkgcache.bin")


def changes(stdout: str) -> bool:
    """Whether apt-get's output says it installed, upgraded, downgraded or removed anything."""
    match = SUMMARY.search(stdout)
    return bool(match) and any(int(count or 0) for count in match.groups())


def missing(wanted: list[str], dpkg_lines: list[str]) -> list[str]:
    """The packages of WANTED (NAME or NAME=VERSION) that dpkg-query's lines ("ii  NAME VERSION") do not
    show installed, at that version where one is asked."""
    installed = {}
    for line in dpkg_lines:
        fields = line.split()
        if len(fields) == 3 and fields[0] == "ii":
            installed[fields[1].split(":")[0]] = fields[2]
    result = []
    for package in wanted:
        name, _sep, version = package.partition("=")
        if name not in installed or (version and installed[name] != version):
            result.append(package)
    return result


def index_age(now: float) -> float:
    for stamp in INDEX_STAMPS:
        try:
            return now - os.stat(stamp).st_mtime
        except OSError:
            continue
    return float("inf")


def command(params: dict, *, simulate: bool) -> list[str]:
    argv = ["apt-get", "install", *OPTIONS]
    argv += ["--allow-change-held-packages"] * params["allow_change_held_packages"]
    argv += ["--allow-downgrades"] * params["allow_downgrade"]
    argv += ["--simulate"] * simulate
    return [*argv, "--", *params["name"]]


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "list", "elements": "str", "required": True},
            "update_cache": {"type": "bool", "default": False},
            "cache_valid_time": {"type": "int", "default": 0},
            "allow_change_held_packages": {"type": "bool", "default": False},
            "allow_downgrade": {"type": "bool", "default": False},
        },
        supports_check_mode=True,
    )
    params = module.params
    environment = {"DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C"}
    names = [package.partition("=")[0] for package in params["name"]]
    _rc, out, _err = module.run_command(
        ["dpkg-query", "--show", "--showformat=${db:Status-Abbrev} ${Package} ${Version}\\n", "--", *names],
        environ_update=environment,
    )  # rc 1 when some are unknown to dpkg: those are missing
    params = {**params, "name": missing(params["name"], out.splitlines())}
    if not params["name"]:
        module.exit_json(changed=False, stdout="", updated=False)
    updated = False
    if params["update_cache"] and index_age(time.time()) >= params["cache_valid_time"]:
        if not module.check_mode:
            rc, out, err = module.run_command(["apt-get", "update", "-q"], environ_update=environment)
            if rc != 0:
                module.fail_json(msg=f"apt-get update failed: {(err or out).strip()}", rc=rc)
        updated = True
    argv = command(params, simulate=module.check_mode)
    rc, out, err = module.run_command(argv, environ_update=environment)
    if rc != 0:
        module.fail_json(msg=f"apt-get install failed: {(err or out).strip()}", rc=rc, stdout=out, stderr=err)
    module.exit_json(changed=changes(out), stdout=out, updated=updated)


if __name__ == "__main__":
    main()
