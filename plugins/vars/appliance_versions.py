"""Vars plugin: gives every host the variable `appliance_versions`, the contents of versions.yml.

versions.yml is the one place for the version and checksum of every artifact; the bundle builder
(src/appliance/bundle/versions.py) reads the same file, so roles and bundle cannot disagree.
"""

from __future__ import annotations

import os

import yaml
from ansible.errors import AnsibleError
from ansible.plugins.vars import BaseVarsPlugin

DOCUMENTATION = r"""
name: appliance_versions
short_description: The appliance's versions.yml as the variable appliance_versions
description:
  - Loads versions.yml from the project root (the directory above plugins/) once, and gives its
    contents to every host and group as C(appliance_versions).
options: {}
"""

VERSIONS_FILE = os.path.join(os.path.dirname(__file__), "..", "..", "versions.yml")


class VarsModule(BaseVarsPlugin):
    REQUIRES_ENABLED = False
    _cached: dict | None = None

    def get_vars(self, loader, path, entities, cache=True):
        super().get_vars(loader, path, entities)
        if VarsModule._cached is None:
            try:
                with open(VERSIONS_FILE, encoding="utf-8") as handle:
                    VarsModule._cached = yaml.safe_load(handle)
            except (OSError, yaml.YAMLError) as error:
                raise AnsibleError(f"appliance_versions: cannot read {VERSIONS_FILE}: {error}") from error
        return {"appliance_versions": VarsModule._cached}
