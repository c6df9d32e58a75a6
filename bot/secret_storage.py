"""Matrix Secret Storage (`m.secret_storage.v1.aes-hmac-sha2`) and the recovery key, as Element
stores them: the bot's cross-signing keys are kept on the homeserver, encrypted under a key that
only the recovery key opens. Pure functions; the cryptography is PyCA's, base58 the library's.
"""

from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass
from functools import reduce
from operator import xor
from typing import Any

import base58
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

ALGORITHM = "m.secret_storage.v1.aes-hmac-sha2"
DEFAULT_KEY = "m.secret_storage.default_key"
KEY_PREFIX = "m.secret_storage.key."
_RECOVERY_PREFIX = b"\x8b\x01"  # the spec's two header bytes of a recovery key
_KEY_CHECK = "\0" * 32  # what a key description encrypts, under the name "", to check a key


class SecretStorageError(ValueError):
    """A recovery key that is malformed or does not open the secret storage."""


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    """Matrix uses base64 with and without padding; both are read."""
    return base64.b64decode(text + "=" * (-len(text) % 4))


def new_key() -> bytes:
    return os.urandom(32)


def encode_recovery_key(key: bytes) -> str:
    """The recovery key as people type it: base58 in groups of four, as Element shows it."""
    raw = _RECOVERY_PREFIX + key
    text = base58.b58encode(raw + bytes([reduce(xor, raw, 0)])).decode()
    return " ".join(text[i : i + 4] for i in range(0, len(text), 4))


def decode_recovery_key(text: str) -> bytes:
    """The 32-byte key inside a recovery key; SecretStorageError says what is wrong."""
    compact = re.sub(r"\s+", "", text)
    try:
        raw = base58.b58decode(compact)
    except ValueError:
        raise SecretStorageError(
            "not a recovery key: it has characters outside base58 (like 'EsTj 3yST ...')"
        ) from None
    if len(raw) != len(_RECOVERY_PREFIX) + 33 or not raw.startswith(_RECOVERY_PREFIX):
        raise SecretStorageError("not a recovery key: wrong length or header (was it cut short?)")
    if reduce(xor, raw, 0) != 0:
        raise SecretStorageError("not a recovery key: its check digit is wrong (a typo?)")
    return raw[len(_RECOVERY_PREFIX) : -1]


def _subkeys(key: bytes, name: str) -> tuple[bytes, bytes]:
    okm = HKDF(algorithm=hashes.SHA256(), length=64, salt=b"\0" * 32, info=name.encode()).derive(
        key
    )
    return okm[:32], okm[32:]


def _mac(hmac_key: bytes) -> hmac.HMAC:
    return hmac.HMAC(hmac_key, hashes.SHA256())


@dataclass(frozen=True)
class Encrypted:
    iv: str
    ciphertext: str
    mac: str

    def to_json(self) -> dict[str, str]:
        return {"iv": self.iv, "ciphertext": self.ciphertext, "mac": self.mac}

    @classmethod
    def from_json(cls, data: Any) -> Encrypted:
        try:
            return cls(str(data["iv"]), str(data["ciphertext"]), str(data["mac"]))
        except (KeyError, TypeError):
            raise SecretStorageError("a stored secret is not in the aes-hmac-sha2 form") from None


def _new_iv() -> bytes:
    iv = bytearray(os.urandom(16))
    iv[8] &= 0x7F  # the spec clears bit 63, so the counter cannot wrap in other clients
    return bytes(iv)


def encrypt(secret: str, key: bytes, name: str, iv: bytes | None = None) -> Encrypted:
    """Encrypts `secret` (the secret's text, itself base64) for account data type `name`."""
    if iv is None:
        iv = _new_iv()
    aes_key, hmac_key = _subkeys(key, name)
    encryptor = Cipher(algorithms.AES(aes_key), modes.CTR(iv)).encryptor()
    ciphertext = encryptor.update(secret.encode()) + encryptor.finalize()
    mac = _mac(hmac_key)
    mac.update(ciphertext)
    return Encrypted(b64(iv), b64(ciphertext), b64(mac.finalize()))


def decrypt(encrypted: Encrypted, key: bytes, name: str) -> str:
    aes_key, hmac_key = _subkeys(key, name)
    ciphertext = unb64(encrypted.ciphertext)
    mac = _mac(hmac_key)
    mac.update(ciphertext)
    try:
        mac.verify(unb64(encrypted.mac))
    except InvalidSignature:
        raise SecretStorageError(f"the recovery key does not open the stored {name}") from None
    decryptor = Cipher(algorithms.AES(aes_key), modes.CTR(unb64(encrypted.iv))).decryptor()
    return (decryptor.update(ciphertext) + decryptor.finalize()).decode()


def key_description(key: bytes, name: str = "Recovery key") -> dict[str, Any]:
    """The `m.secret_storage.key.<id>` content: the algorithm and a check that a key is it."""
    check = encrypt(_KEY_CHECK, key, "")
    return {"algorithm": ALGORITHM, "name": name, "iv": check.iv, "mac": check.mac}


def key_opens(description: dict[str, Any], key: bytes) -> bool:
    """Whether `key` is the one a key description was made for (as Element checks it)."""
    if description.get("algorithm") != ALGORITHM:
        return False
    iv, mac = description.get("iv"), description.get("mac")
    if not isinstance(iv, str) or not isinstance(mac, str):
        return True  # an old description with no check: decrypting will tell
    return encrypt(_KEY_CHECK, key, "", unb64(iv)).mac.rstrip("=") == mac.rstrip("=")
