#!/usr/bin/python
"""Ansible module node_read: a role's reads of a node (files, paths, read-only commands) in one execution."""

from __future__ import annotations

DOCUMENTATION = r"""
module: node_read
short_description: Read files, test paths and run read-only commands on a node, in one module execution
description:
  - A role usually starts by reading the state it will judge (/proc/swaps, a configuration file, what
    dpkg has installed); with one task per read, each read costs a module execution (a Python start on the
    node, about a quarter of a CPU second). This module does them all in one and changes nothing.
  - It never fails for a missing file or a failing command; the result says what happened and the role
    decides.
  - The commands must only read; they run in check mode too, as a command task with C(check_mode=false) does.
options:
  files:
    description: Files whose text is returned.
    type: list
    elements: path
    default: []
  paths:
    description: Paths whose existence is returned (files, directories, anything C(os.path.lexists) sees).
    type: list
    elements: path
    default: []
  commands:
    description: Named argument vectors, run without a shell.
    type: dict
    default: {}
attributes:
  check_mode:
    support: full
    description: It only reads, so it runs in check mode as in any other run.
  diff_mode:
    support: none
    description: Returns no diff.
author:
  - Appliance toolkit maintainers (@appliance-maintainers)
"""

EXAMPLES = r"""
- name: Read the node
  appliance.runai.node_read:
    files: [/proc/swaps]
    paths: [/sys/module/br_netfilter]
    commands:
      swap_units: [systemctl, list-units, --type=swap, --all, --no-legend, --plain]
  register: prereqs_node

- name: Use it
  ansible.builtin.debug:
    msg: "{{ prereqs_node.files['/proc/swaps'].content }} {{ prereqs_node.commands.swap_units.stdout_lines }}"
"""

RETURN = r"""
files:
  description: For each file, its text as C(content) (empty when unreadable) and C(error) (empty when read).
  returned: always
  type: dict
  sample: {/proc/swaps: {content: "Filename\tType\tSize\tUsed\tPriority\n", error: ""}}
paths:
  description: For each path, whether it exists.
  returned: always
  type: dict
  sample: {/sys/module/overlay: true}
commands:
  description: For each command, C(rc), C(stdout), C(stdout_lines) and C(stderr); rc 127 when not installed.
  returned: always
  type: dict
  sample: {swap_units: {rc: 0, stdout: "", stdout_lines: [], stderr: ""}}
"""

import os

from ansible.module_utils.basic import AnsibleModule


def read(path: str) -> dict:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return {"content": handle.read(), "error": ""}
    except OSError as error:
        return {"content": "", "error": f"{path}: {error.strerror}"}


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "files": {"type": "list", "elements": "path", "default": []},
            "paths": {"type": "list", "elements": "path", "default": []},
            "commands": {"type": "dict", "default": {}},
        },
        supports_check_mode=True,
    )
    params = module.params
    commands = {}
    for name, argv in params["commands"].items():
        if not isinstance(argv, list) or not argv or not all(isinstance(arg, str) for arg in argv):
            module.fail_json(msg=f"commands.{name} must be a non-empty list of strings, not {argv!r}")
        program = argv[0] if os.path.isabs(argv[0]) else module.get_bin_path(argv[0])
        if program is None or not os.access(program, os.X_OK):
            commands[name] = {"rc": 127, "stdout": "", "stdout_lines": [], "stderr": f"{argv[0]}: not found"}
            continue
        rc, out, err = module.run_command(argv)
        commands[name] = {"rc": rc, "stdout": out, "stdout_lines": out.splitlines(), "stderr": err}
    module.exit_json(
        changed=False,
        files={path: read(path) for path in params["files"]},
        paths={path: os.path.lexists(path) for path in params["paths"]},
        commands=commands,
    )


if __name__ == "__main__":
    main()
