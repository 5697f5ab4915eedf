#!/usr/bin/python
"""Ansible module runai_admin_password: the Run:ai control plane's admin password, never the default one."""

from __future__ import annotations

DOCUMENTATION = r"""
module: runai_admin_password
short_description: Set the password of the Run:ai control plane's admin account, replacing the default one
description:
  - A fresh Run:ai control plane lets its well-known admin account (test@run.ai) in with the password
    C(password). This module logs in with O(password); when that fails and the default password still
    works, it sets O(password) through the control plane's identity provider (Keycloak's token and admin
    REST API, realm O(realm)) and checks that the new password logs in and the default no longer does.
  - It connects to O(address) (the control plane's external IP) and checks the TLS certificate against
    O(ca_file) for the host name of O(url), so that it works before DNS names the control plane.
  - Retries while the control plane does not answer yet (a release that was just installed).
  - Fails, changing nothing, when neither password logs in.
options:
  url:
    description: The control plane's address, C(https://DOMAIN).
    type: str
    required: true
  address:
    description: The IP address to connect to; by default the host name of O(url).
    type: str
  ca_file:
    description: The CA certificate (PEM) that signed the control plane's certificate.
    type: path
    required: true
  username:
    description: The admin account.
    type: str
    default: test@run.ai
  password:
    description: The password the admin account must have (from Ansible Vault).
    type: str
    required: true
  default_password:
    description: The password a fresh control plane gives the admin account (well known, so not hidden).
    type: str
    default: password
  realm:
    description: The identity provider's realm.
    type: str
    default: runai
  client_id:
    description: The client the login uses.
    type: str
    default: runai
  timeout:
    description: Seconds to keep trying while the control plane does not answer.
    type: int
    default: 300
attributes:
  check_mode:
    support: full
    description: Reports what it would change and changes nothing.
    details: In check mode it only logs in, and reports a change when the default password still works.
  diff_mode:
    support: none
    description: Returns no diff.
author:
  - Appliance toolkit maintainers (@appliance-maintainers)
"""

EXAMPLES = r"""
- name: Replace the admin account's default password
  appliance.runai.runai_admin_password:
    url: https://runai.example.com
    address: 10.0.0.100
    ca_file: /etc/kubernetes/appliance/runai-ca.crt
    password: "{{ runai_admin_password }}"
"""

RETURN = r"""
username:
  description: The admin account.
  returned: always
  type: str
  sample: test@run.ai
"""

import http.client
import json
import socket
import ssl
import time
import urllib.parse

from ansible.module_utils.basic import AnsibleModule


class ControlPlane:
    """HTTPS to ADDRESS, with the certificate checked against CA_FILE for the host name of URL."""

    def __init__(self, url: str, address: str | None, ca_file: str, realm: str, client_id: str) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme != "https" or not parsed.hostname:
            raise ValueError(f"url must be https://DOMAIN, not {url!r}")
        self.host = parsed.hostname
        self.port = parsed.port or 443
        self.address = address or self.host
        self.context = ssl.create_default_context(cafile=ca_file)
        self.realm = realm
        self.client_id = client_id

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        connection = http.client.HTTPSConnection(self.host, self.port, context=self.context, timeout=30)
        # Connect to the address, but send the host name for SNI and check the certificate against it.
        sock = socket.create_connection((self.address, self.port), timeout=30)
        connection.sock = self.context.wrap_socket(sock, server_hostname=self.host)
        try:
            connection.request(method, path, body=body, headers={"Host": self.host, **(headers or {})})
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def token(self, username: str, password: str) -> str | None:
        """An access token for USERNAME/PASSWORD, or None when the identity provider refuses them."""
        form = urllib.parse.urlencode(
            {
                "grant_type": "password",
                "client_id": self.client_id,
                "username": username,
                "password": password,
            }
        ).encode()
        status, body = self.request(
            "POST",
            f"/auth/realms/{self.realm}/protocol/openid-connect/token",
            form,
            {"Content-Type": "application/x-www-form-urlencoded"},
        )
        if status == 200:
            return json.loads(body)["access_token"]
        if status in (400, 401):
            return None
        raise RuntimeError(f"the token endpoint answered HTTP {status}")

    def set_password(self, token: str, username: str, password: str) -> None:
        auth = {"Authorization": f"Bearer {token}"}
        query = urllib.parse.urlencode({"username": username, "exact": "true"})
        status, body = self.request("GET", f"/auth/admin/realms/{self.realm}/users?{query}", headers=auth)
        if status != 200:
            raise RuntimeError(f"listing the users answered HTTP {status}")
        users = [user for user in json.loads(body) if user.get("username") == username]
        if len(users) != 1:
            raise RuntimeError(f"the identity provider has {len(users)} users named {username}")
        payload = json.dumps({"type": "password", "value": password, "temporary": False}).encode()
        status, _body = self.request(
            "PUT",
            f"/auth/admin/realms/{self.realm}/users/{users[0]['id']}/reset-password",
            payload,
            {**auth, "Content-Type": "application/json"},
        )
        if status not in (200, 204):
            raise RuntimeError(f"setting the password answered HTTP {status}")


def first_answer(module: AnsibleModule, plane: ControlPlane, timeout: int) -> str | None:
    """Log in with the wanted password, retrying while the control plane does not answer."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return plane.token(module.params["username"], module.params["password"])
        except ssl.SSLCertVerificationError as error:
            module.fail_json(
                msg=f"the control plane's TLS certificate does not verify: {error.verify_message}"
            )
        except (OSError, RuntimeError, http.client.HTTPException) as error:
            if time.monotonic() > deadline:
                module.fail_json(msg=f"the control plane did not answer within {timeout} s: {error}")
            time.sleep(3)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "url": {"type": "str", "required": True},
            "address": {"type": "str"},
            "ca_file": {"type": "path", "required": True},
            "username": {"type": "str", "default": "test@run.ai"},
            "password": {"type": "str", "required": True, "no_log": True},
            # Public knowledge, and hiding it would mask the word "password" in every message.
            "default_password": {"type": "str", "default": "password", "no_log": False},
            "realm": {"type": "str", "default": "runai"},
            "client_id": {"type": "str", "default": "runai"},
            "timeout": {"type": "int", "default": 300},
        },
        supports_check_mode=True,
    )
    params = module.params
    username = params["username"]
    if params["password"] == params["default_password"]:
        module.fail_json(msg="the admin password must not be the default one")
    try:
        plane = ControlPlane(
            params["url"], params["address"], params["ca_file"], params["realm"], params["client_id"]
        )
    except (ValueError, OSError) as error:
        module.fail_json(msg=str(error))
    if first_answer(module, plane, params["timeout"]) is not None:
        module.exit_json(changed=False, username=username)
    try:
        token = plane.token(username, params["default_password"])
        if token is None:
            module.fail_json(
                msg=f"{username} logs in neither with the given password nor with the default one: "
                "set the admin password variable to the account's current password"
            )
        if module.check_mode:
            module.exit_json(changed=True, username=username)
        plane.set_password(token, username, params["password"])
        if plane.token(username, params["password"]) is None:
            module.fail_json(msg=f"the new password of {username} was set but does not log in")
        if plane.token(username, params["default_password"]) is not None:
            module.fail_json(msg=f"the default password of {username} still logs in after the change")
    except (OSError, RuntimeError, http.client.HTTPException, ValueError, KeyError) as error:
        module.fail_json(msg=f"setting the password of {username} failed: {error}")
    module.exit_json(changed=True, username=username)


if __name__ == "__main__":
    main()
