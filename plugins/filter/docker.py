"""Filter docker_reload_only: whether a change of /etc/docker/daemon.json touches only options that dockerd
reloads in place (SIGHUP, `systemctl reload docker`), so role docker can apply it without restarting
docker and every container it runs.

The options come from dockerd's documentation ("Configuration reload behavior", docker 20.10).
"""

from __future__ import annotations

DOCUMENTATION = r"""
name: docker_reload_only
short_description: Whether a daemon.json change needs only a reload of dockerd
description:
  - Compares the parsed daemon.json before and after a change; true when some option differs and every
    option that differs is one dockerd reloads on SIGHUP (insecure-registries, registry-mirrors, runtimes,
    default-runtime, labels, debug, live-restore, max-concurrent-downloads, max-concurrent-uploads,
    max-download-attempts, shutdown-timeout, authorization-plugins, features).
positional: _input, wanted
options:
  _input:
    description: The configuration in effect (parsed daemon.json).
    type: dict
    required: true
  wanted:
    description: The configuration about to be written.
    type: dict
    required: true
"""

RELOADABLE = frozenset(
    {
        "authorization-plugins",
        "debug",
        "default-runtime",
        "features",
        "insecure-registries",
        "labels",
        "live-restore",
        "max-concurrent-downloads",
        "max-concurrent-uploads",
        "max-download-attempts",
        "registry-mirrors",
        "runtimes",
        "shutdown-timeout",
    }
)


def docker_reload_only(current: dict, wanted: dict) -> bool:
    current, wanted = current or {}, wanted or {}
    changed = {key for key in {*current, *wanted} if current.get(key) != wanted.get(key)}
    return bool(changed) and changed <= RELOADABLE


class FilterModule:
    def filters(self):
        return {"docker_reload_only": docker_reload_only}
