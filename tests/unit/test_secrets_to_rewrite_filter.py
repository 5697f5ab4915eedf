"""Filter secrets_to_rewrite: which Secrets etcd holds in another form than the API server writes now."""

from __future__ import annotations

import base64
import json

from plugins.filter.etcd import secrets_to_rewrite


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def answer(**secrets: bytes) -> str:
    """etcdctl get --write-out=json for Secrets given as namespace__name=stored value."""
    kvs = [
        {"key": b64("/registry/secrets/" + name.replace("__", "/")), "value": b64(value)}
        for name, value in secrets.items()
    ]
    return json.dumps({"header": {"revision": 7}, "kvs": kvs, "count": len(kvs)})


PLAIN = b"k8s\x00\n\x0c\n\x02v1\x12\x06Secret\xff\xfe"  # protobuf, not UTF-8
AESCBC = b"k8s:enc:aescbc:v1:key1:\x8a\x01\xff"
OTHER_KEY = b"k8s:enc:aescbc:v1:key2:\x8a\x01\xff"
SECRETBOX = b"k8s:enc:secretbox:v1:key1:\x00"


def test_plain_secrets_are_rewritten_when_aescbc_is_wanted():
    etcd = answer(default__a=PLAIN, kube_system__b=AESCBC)
    assert secrets_to_rewrite(etcd, "aescbc") == ["default/a"]


def test_encrypted_secrets_are_rewritten_when_plain_is_wanted():
    etcd = answer(default__a=PLAIN, kube_system__b=AESCBC, x__c=SECRETBOX)
    assert secrets_to_rewrite(etcd, "identity") == ["kube_system/b", "x/c"]


def test_another_key_or_provider_is_rewritten():
    etcd = answer(a__one=OTHER_KEY, a__two=SECRETBOX, a__three=AESCBC)
    assert secrets_to_rewrite(etcd, "aescbc") == ["a/one", "a/two"]


def test_nothing_to_rewrite():
    assert secrets_to_rewrite(answer(a__b=AESCBC), "aescbc") == []
    assert secrets_to_rewrite(answer(a__b=PLAIN), "identity") == []


def test_no_secrets_at_all():
    assert secrets_to_rewrite(json.dumps({"header": {}, "count": 0}), "aescbc") == []
    assert secrets_to_rewrite({"kvs": []}, "aescbc") == []


def test_keys_outside_secrets_are_ignored():
    etcd = json.loads(answer(a__b=AESCBC))
    etcd["kvs"].append({"key": b64("/registry/configmaps/a/b"), "value": b64(PLAIN)})
    assert secrets_to_rewrite(etcd, "aescbc") == []
