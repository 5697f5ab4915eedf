"""Filter dpkg_installed: what `dpkg-query --show` says is installed, for the roles that skip apt when
nothing is missing (prereqs, docker, kube_packages, bundle_serve).

The roles ask dpkg with one format, so that one parser serves them all:

    dpkg-query --show '--showformat=${db:Status-Abbrev} ${Package} ${Version}\\n' NAME...

Each line: the status abbreviation (selection, state, error flag: "ii " installed, "hi " installed and
held, "un " not installed, "rc " removed with its configuration left), the package and its version.
"""

from __future__ import annotations

DOCUMENTATION = r"""
name: dpkg_installed
short_description: The packages dpkg shows installed, with their version and hold
description:
  - Reads the lines of C(dpkg-query --show '--showformat=${db:Status-Abbrev} ${Package} ${Version}\n').
  - Returns a mapping package -> {version, held} for the packages whose state is installed (second letter i).
positional: _input
options:
  _input:
    description: The command's stdout_lines.
    type: list
    elements: str
    required: true
"""


def dpkg_installed(lines: list[str]) -> dict[str, dict[str, object]]:
    installed = {}
    for line in lines:
        # The status is three letters, the last a space when there is no error: "ii  kubelet 1.23.5-00".
        status, _sep, rest = line.partition(" ")
        fields = rest.split()
        if len(status) >= 2 and status[1] == "i" and fields:
            installed[fields[0]] = {"version": fields[1] if len(fields) > 1 else "", "held": status[0] == "h"}
    return installed


class FilterModule:
    def filters(self):
        return {"dpkg_installed": dpkg_installed}
