"""Lookup plugin appliance.runai.versions: a value of the collection's versions.yml.

versions.yml is the one place for the version and checksum of every artifact; the bundle builder
(src/appliance/bundle/versions.py) reads the same file, so roles and bundle cannot disagree. Roles read it
through this lookup (a vars plugin would have to be enabled by each user of the collection).
"""

from __future__ import annotations

DOCUMENTATION = r"""
name: versions
author: Appliance toolkit maintainers (@appliance-maintainers)
short_description: A value of the appliance's versions.yml
description:
  - Reads versions.yml at the root of the collection (the directory above plugins/) once per process, and
    returns the value at each dotted path given, or the whole file when no path is given.
options:
  _terms:
    description:
      - Dotted paths into versions.yml, for example C(kubernetes.version) or C(charts.gpu-operator.version).
    type: list
    elements: str
    required: false
"""

EXAMPLES = r"""
- name: The Kubernetes version the appliance runs
  ansible.builtin.debug:
    msg: "{{ lookup('appliance.runai.versions', 'kubernetes.version') }}"
"""

RETURN = r"""
_raw:
  description: The value at each path, or the whole of versions.yml when no path is given.
  type: list
  elements: raw
"""

import os

from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase

try:
    import yaml
except ImportError:  # pragma: no cover - PyYAML comes with ansible-core
    yaml = None

VERSIONS_FILE = os.path.join(os.path.dirname(__file__), "..", "..", "versions.yml")
_CACHE: dict = {}


def load(path: str = VERSIONS_FILE) -> dict:
    """versions.yml, read once per process."""
    if path not in _CACHE:
        try:
            with open(path, encoding="utf-8") as handle:
                _CACHE[path] = yaml.safe_load(handle)
        except (OSError, yaml.YAMLError) as error:
            raise AnsibleLookupError(f"appliance.runai.versions: cannot read {path}: {error}") from error
    return _CACHE[path]


def value_at(data: dict, dotted: str):
    """The value at a dotted path ('kubernetes.version'), or an error naming the first missing key."""
    value = data
    walked = []
    for key in dotted.split("."):
        walked.append(key)
        if not isinstance(value, dict) or key not in value:
            raise AnsibleLookupError(f"appliance.runai.versions: versions.yml has no {'.'.join(walked)}")
        value = value[key]
    return value


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        self.set_options(var_options=variables, direct=kwargs)
        data = load()
        if not terms:
            return [data]
        return [value_at(data, term) for term in terms]
