#!/usr/bin/python
"""Documentation of the action plugin tar_stream (plugins/action/tar_stream.py), which does the work."""

from __future__ import annotations

DOCUMENTATION = r"""
module: tar_stream
short_description: Copy files from the controller into a node's directory as one tar stream
description:
  - Packs O(files) of O(src) on the controller with tar and unpacks them into O(dest) on the node, as root
    (the task's become), owned by root and writable by root only. The directory is created when missing.
  - Over Ansible's ssh connection with key login and a become that needs no password, tar's output goes
    straight into C(ssh node sudo tar -x), through the connection's own ssh command line (its user, port,
    key, options and ControlMaster socket), the way an operator copies a directory; nothing is written
    twice. On the lab this copies the 1.1 GB bundle in about 4 s, where packing an archive on the controller
    and M(ansible.builtin.unarchive) took about 10 s (benchmarks/site.py, issue 5).
  - With any other connection (local, docker), a login password or a become password, the files go the
    usual way instead - a temporary archive on the controller, sent with the connection's put_file,
    unpacked and removed.
  - Always reports C(changed) - call it only for files that are missing or differ. No check mode.
options:
  src:
    description: Directory on the controller that holds O(files).
    type: path
    required: true
  files:
    description: Paths of the files to copy, relative to O(src).
    type: list
    elements: str
    required: true
  dest:
    description: Directory on the node to unpack into (absolute).
    type: path
    required: true
author:
  - Appliance toolkit maintainers (@appliance-maintainers)
"""

EXAMPLES = r"""
- name: Copy the files that are missing or differ
  appliance.runai.tar_stream:
    src: /srv/bundle
    files: [manifest.json, debs/kubeadm_1.23.5-00_amd64.deb]
    dest: /var/lib/appliance/bundle
  become: true
"""

RETURN = r"""
method:
  description: How the files went, C(stream) (tar piped into ssh) or C(put_file) (a temporary archive).
  type: str
  returned: success
files:
  description: How many files were copied.
  type: int
  returned: success
"""
