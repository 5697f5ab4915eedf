"""Action plugin tar_stream: copy files from the controller into a directory of the node as one tar stream.

Its documentation is in plugins/modules/tar_stream.py, where ansible-doc looks for it."""

from __future__ import annotations

import os
import shlex
import subprocess
import tempfile

from ansible.errors import AnsibleActionFail
from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.action import ActionBase


class ActionModule(ActionBase):
    TRANSFERS_FILES = True
    _requires_connection = True

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        _spec, args = self.validate_argument_spec(
            argument_spec={
                "src": {"type": "path", "required": True},
                "files": {"type": "list", "elements": "str", "required": True},
                "dest": {"type": "path", "required": True},
            }
        )
        if self._task.check_mode:
            raise AnsibleActionFail("tar_stream has no check mode; skip the task in check mode")
        src, files, dest = args["src"], args["files"], args["dest"]
        if not os.path.isdir(src):
            raise AnsibleActionFail(f"{src} is not a directory on the controller")
        if not os.path.isabs(dest):
            raise AnsibleActionFail(f"dest must be an absolute path, not {dest}")
        bad = [name for name in files if os.path.isabs(name) or ".." in name.split("/")]
        if bad:
            raise AnsibleActionFail(f"files must be paths inside src: {', '.join(bad)}")
        if not files:
            return {**result, "changed": False, "method": "none", "files": 0}

        pack = [
            "tar",
            "--create",
            "--file",
            "-",
            "--owner=0",
            "--group=0",
            "--mode=go-w",
            "--directory",
            src,
            "--",
            *files,
        ]
        unpack = (
            f"mkdir -p {shlex.quote(dest)} && "
            f"tar --extract --file - --no-same-owner --directory {shlex.quote(dest)}"
        )
        ssh_command = self._ssh_command(unpack)
        if ssh_command is not None:
            self._stream(pack, ssh_command)
            method = "stream"
        else:
            self._put_file(pack, unpack)
            method = "put_file"
        return {**result, "changed": True, "method": method, "files": len(files)}

    def _ssh_command(self, unpack: str) -> list[bytes] | None:
        """The connection's own ssh command line running UNPACK as the become user, or None where it
        cannot take a stream on stdin (not ssh, a login password, a become password)."""
        connection = self._connection
        if connection.transport != "ssh" or getattr(connection._shell, "_IS_WINDOWS", False):
            return None
        if connection.get_option("password") or self._play_context.password:
            return None
        command = f"/bin/sh -c {shlex.quote(unpack)}"
        if connection.become:
            command = connection.become.build_become_command(command, connection._shell)
            if connection.become.prompt:
                return None
        host = connection.get_option("host") or self._play_context.remote_addr
        return connection._build_command(connection.get_option("ssh_executable"), "ssh", host, command)

    def _stream(self, pack: list[str], ssh_command: list[bytes]) -> None:
        with tempfile.TemporaryFile() as tar_errors:
            tar = subprocess.Popen(pack, stdout=subprocess.PIPE, stderr=tar_errors)
            ssh = subprocess.run(ssh_command, stdin=tar.stdout, capture_output=True, check=False)
            tar.stdout.close()
            tar_status = tar.wait()
            tar_errors.seek(0)
            packed = tar_errors.read()
        # ssh first: when it fails, tar on the controller fails too, of the broken pipe.
        if ssh.returncode != 0:
            raise AnsibleActionFail(
                f"unpacking on the node failed (rc {ssh.returncode}): {to_text(ssh.stderr)[-2000:]}"
            )
        if tar_status != 0:
            raise AnsibleActionFail(f"tar on the controller failed: {to_text(packed)[-2000:]}")

    def _put_file(self, pack: list[str], unpack: str) -> None:
        with tempfile.NamedTemporaryFile(suffix=".tar") as archive:
            packed = subprocess.run(pack, stdout=archive, stderr=subprocess.PIPE, check=False)
            if packed.returncode != 0:
                raise AnsibleActionFail(f"tar on the controller failed: {to_text(packed.stderr)[-2000:]}")
            remote_tmp = self._make_tmp_path()
            try:
                remote = self._connection._shell.join_path(remote_tmp, "files.tar")
                self._transfer_file(archive.name, remote)
                self._fixup_perms2((remote_tmp, remote))
                command = unpack.replace("--file -", f"--file {shlex.quote(remote)}")
                done = self._low_level_execute_command(command, sudoable=True)
                if done["rc"] != 0:
                    raise AnsibleActionFail(
                        f"unpacking on the node failed (rc {done['rc']}): {done['stderr'][-2000:]}"
                    )
            finally:
                self._remove_tmp_path(remote_tmp)
