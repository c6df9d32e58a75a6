"""Cross-signing, the pure part: the account's three Ed25519 keys, signed JSON, and whether a
device is cross-signed by its owner (master key → self-signing key → device), which is what
Element's "exclude insecure devices" checks. Keys are PyCA's, canonical JSON canonicaljson's.
"""

from __future__ import annotations

import base64
import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from canonicaljson import encode_canonical_json
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

MASTER, SELF_SIGNING, USER_SIGNING = "master", "self_signing", "user_signing"
KINDS = (MASTER, SELF_SIGNING, USER_SIGNING)


def unpadded_b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def key_id(public_key: str) -> str:
    return f"ed25519:{public_key}"


def secret_name(kind: str) -> str:
    """The Secret Storage name (and account data type) of a cross-signing private key."""
    return f"m.cross_signing.{kind}"


def _public(seed: bytes) -> str:
    raw = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
    return unpadded_b64(raw)


@dataclass(frozen=True)
class CrossSigningKeys:
    """The private halves (32-byte Ed25519 seeds) of an account's cross-signing keys."""

    master: bytes
    self_signing: bytes
    user_signing: bytes

    @classmethod
    def generate(cls) -> CrossSigningKeys:
        return cls(*(Ed25519PrivateKey.generate().private_bytes_raw() for _ in KINDS))

    def seed(self, kind: str) -> bytes:
        seed: bytes = getattr(self, kind)  # the kinds are the field names
        return seed

    def public(self, kind: str) -> str:
        return _public(self.seed(kind))

    def secrets(self) -> dict[str, str]:
        """Each private key as Secret Storage holds it: unpadded base64, by secret name."""
        return {secret_name(kind): unpadded_b64(self.seed(kind)) for kind in KINDS}

    @classmethod
    def from_secrets(cls, secrets: Mapping[str, str]) -> CrossSigningKeys:
        return cls(*(_unb64(secrets[secret_name(kind)]) for kind in KINDS))

    def upload_body(self, user_id: str) -> dict[str, Any]:
        """The body of `POST /keys/device_signing/upload`: the public keys, the sub-keys
        signed by the master key."""
        master = self._key_object(user_id, MASTER)
        body = {"master_key": master}
        for kind in (SELF_SIGNING, USER_SIGNING):
            body[f"{kind}_key"] = sign(self._key_object(user_id, kind), user_id, self.master)
        return body

    def _key_object(self, user_id: str, kind: str) -> dict[str, Any]:
        public = self.public(kind)
        return {"user_id": user_id, "usage": [kind], "keys": {key_id(public): public}}


def _unsigned_copy(obj: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(obj))
    out.pop("signatures", None)
    out.pop("unsigned", None)
    return out


def sign(obj: Mapping[str, Any], user_id: str, seed: bytes) -> dict[str, Any]:
    """`obj` with only this key's signature: the Matrix signing-JSON algorithm."""
    signed = _unsigned_copy(obj)
    signature = Ed25519PrivateKey.from_private_bytes(seed).sign(encode_canonical_json(signed))
    signed["signatures"] = {user_id: {key_id(_public(seed)): unpadded_b64(signature)}}
    return signed


def signed_by(obj: Mapping[str, Any], user_id: str, public_key: str) -> bool:
    """Whether `obj` carries a valid signature by `user_id`'s Ed25519 key `public_key`."""
    signature = obj.get("signatures", {}).get(user_id, {}).get(key_id(public_key))
    if not isinstance(signature, str):
        return False
    try:
        Ed25519PublicKey.from_public_bytes(_unb64(public_key)).verify(
            _unb64(signature), encode_canonical_json(_unsigned_copy(obj))
        )
    except (InvalidSignature, ValueError):
        return False
    return True


def _the_key(key_object: Any, user_id: str, usage: str) -> str | None:
    """The one public key of a cross-signing key object, if it is `user_id`'s and for `usage`."""
    if not isinstance(key_object, dict) or key_object.get("user_id") != user_id:
        return None
    if usage not in key_object.get("usage", ()):
        return None
    keys = [v for k, v in key_object.get("keys", {}).items() if k.startswith("ed25519:")]
    return keys[0] if len(keys) == 1 and isinstance(keys[0], str) else None


@dataclass(frozen=True)
class UserKeys:
    """What `/keys/query` says of one user's cross-signing: the master key and, when the
    master key really signed it, the self-signing key."""

    master: str | None
    self_signing: str | None


def user_keys(query: Mapping[str, Any], user_id: str) -> UserKeys:
    master = _the_key(query.get("master_keys", {}).get(user_id), user_id, MASTER)
    ssk_object = query.get("self_signing_keys", {}).get(user_id)
    ssk = _the_key(ssk_object, user_id, SELF_SIGNING)
    if master is None or ssk is None or not signed_by(ssk_object, user_id, master):
        ssk = None
    return UserKeys(master, ssk)


def _signed_device(device: Any, user_id: str, ssk: str | None) -> bool:
    return ssk is not None and isinstance(device, dict) and signed_by(device, user_id, ssk)


def device_is_cross_signed(query: Mapping[str, Any], user_id: str, device_id: str) -> bool:
    """Master key → self-signing key → device, each signature checked. A user with no
    cross-signing keys has no cross-signed device."""
    device = query.get("device_keys", {}).get(user_id, {}).get(device_id)
    return _signed_device(device, user_id, user_keys(query, user_id).self_signing)


def cross_signed_devices(query: Mapping[str, Any]) -> dict[tuple[str, str], bool]:
    """Every device in a `/keys/query` answer, and whether its owner cross-signed it."""
    judged = {}
    for user_id, devices in query.get("device_keys", {}).items():
        ssk = user_keys(query, user_id).self_signing
        for device_id, device in devices.items():
            judged[user_id, device_id] = _signed_device(device, user_id, ssk)
    return judged
