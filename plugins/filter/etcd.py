"""Filter secrets_to_rewrite: the Secrets etcd does not hold in the form the API server writes them in.

Role kube_control_plane encrypts Secrets in etcd (kube_control_plane_secrets_encryption). The API server
encrypts a Secret only when it writes it, so after the provider changes every Secret stored before must be
written again (`kubectl replace`), as the Kubernetes documentation on encryption at rest says. This filter
reads etcd's own answer (`etcdctl get /registry/secrets/ --prefix --write-out=json`, keys and values in
base64) and names the Secrets whose stored value is not in the wanted form: `k8s:enc:<provider>:v1:` then the
key's name for an encrypting provider, no such prefix for identity (plain).
"""

from __future__ import annotations

import base64
import json
from typing import Any

DOCUMENTATION = r"""
name: secrets_to_rewrite
author: Appliance toolkit maintainers (@appliance-maintainers)
short_description: The Secrets etcd does not hold in the form the API server writes now
description:
  - Reads the JSON of C(etcdctl get /registry/secrets/ --prefix --write-out=json) (keys and values in base64)
    and returns C(namespace/name) of every Secret whose value etcd holds in another form than C(provider)
    writes, sorted. C(identity) wants plain values; another provider wants the prefix
    C(k8s:enc:PROVIDER:v1:KEY:).
  - Returns an empty list when every Secret is stored as wanted (or there are none).
positional: _input
options:
  _input:
    description: etcdctl's JSON output, as text or parsed.
    type: raw
    required: true
  provider:
    description: The provider the API server writes Secrets with (aescbc, secretbox, identity, ...).
    type: str
    required: true
  key:
    description: The name of the key in the EncryptionConfiguration (ignored for identity).
    type: str
    default: key1
"""

EXAMPLES = r"""
- name: Name the Secrets still stored in plain text
  ansible.builtin.debug:
    msg: "{{ etcd_secrets.stdout | appliance.runai.secrets_to_rewrite('aescbc') }}"
"""

RETURN = r"""
_value:
  description: C(namespace/name) of each Secret stored otherwise, sorted.
  type: list
  elements: str
"""

PREFIX = "/registry/secrets/"


def secrets_to_rewrite(etcd_answer: Any, provider: str, key: str = "key1") -> list[str]:
    answer = json.loads(etcd_answer) if isinstance(etcd_answer, (str, bytes)) else etcd_answer
    wanted = f"k8s:enc:{provider}:v1:{key}:".encode()
    stale = []
    for kv in (answer or {}).get("kvs") or []:
        name = base64.b64decode(kv["key"]).decode()
        if not name.startswith(PREFIX):
            continue
        value = base64.b64decode(kv.get("value", ""))
        as_wanted = not value.startswith(b"k8s:enc:") if provider == "identity" else value.startswith(wanted)
        if not as_wanted:
            stale.append(name[len(PREFIX) :])
    return sorted(stale)


class FilterModule:
    def filters(self):
        return {"secrets_to_rewrite": secrets_to_rewrite}
