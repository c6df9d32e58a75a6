"""Cross-signing and Secret Storage, the pure parts: checked against independent code
(signedjson, Synapse's own signing library) and against tampering."""

from __future__ import annotations

import copy

import pytest
from signedjson.key import decode_verify_key_bytes
from signedjson.sign import SignatureVerifyException, verify_signed_json

from bot import cross_signing as xs
from bot import secret_storage as ss

ALICE = "@alice:example.org"


def _device(device_id: str = "DEV") -> dict[str, object]:
    return {
        "user_id": ALICE,
        "device_id": device_id,
        "algorithms": ["m.megolm.v1.aes-sha2"],
        "keys": {f"ed25519:{device_id}": "abc", f"curve25519:{device_id}": "def"},
        "signatures": {ALICE: {f"ed25519:{device_id}": "self-signature"}},
        "unsigned": {"device_display_name": "phone"},
    }


def test_a_signature_verifies_with_signedjson() -> None:
    keys = xs.CrossSigningKeys.generate()
    signed = xs.sign(_device(), ALICE, keys.self_signing)
    public = keys.public(xs.SELF_SIGNING)
    verify_key = decode_verify_key_bytes(f"ed25519:{public}", xs._unb64(public))
    verify_signed_json(signed, ALICE, verify_key)  # raises if wrong
    assert "unsigned" not in signed
    signed["keys"]["ed25519:DEV"] = "changed"
    with pytest.raises(SignatureVerifyException):
        verify_signed_json(signed, ALICE, verify_key)


def _query(keys: xs.CrossSigningKeys, *devices: dict[str, object]) -> dict[str, object]:
    body = keys.upload_body(ALICE)
    return {
        "master_keys": {ALICE: body["master_key"]},
        "self_signing_keys": {ALICE: body["self_signing_key"]},
        "device_keys": {ALICE: {str(d["device_id"]): d for d in devices}},
    }


def _merge_signature(device: dict[str, object], signed: dict[str, object]) -> dict[str, object]:
    """As the homeserver does: the new signature is added to the device's own."""
    merged = copy.deepcopy(device)
    merged["signatures"][ALICE].update(signed["signatures"][ALICE])  # type: ignore[index]
    return merged


def test_a_device_signed_along_the_chain_is_cross_signed_and_others_are_not() -> None:
    keys = xs.CrossSigningKeys.generate()
    signed = _merge_signature(
        _device("SIGNED"), xs.sign(_device("SIGNED"), ALICE, keys.self_signing)
    )
    by_master = _merge_signature(
        _device("BYMASTER"), xs.sign(_device("BYMASTER"), ALICE, keys.master)
    )
    query = _query(keys, signed, _device("UNSIGNED"), by_master)
    assert xs.cross_signed_devices(query) == {
        (ALICE, "SIGNED"): True,
        (ALICE, "UNSIGNED"): False,
        (ALICE, "BYMASTER"): False,  # the device must be signed by the self-signing key
    }


def test_a_self_signing_key_the_master_did_not_sign_breaks_the_chain() -> None:
    keys, other = xs.CrossSigningKeys.generate(), xs.CrossSigningKeys.generate()
    device = _merge_signature(_device(), xs.sign(_device(), ALICE, keys.self_signing))
    query = _query(keys, device)
    query["master_keys"] = {ALICE: other.upload_body(ALICE)["master_key"]}
    assert xs.user_keys(query, ALICE).self_signing is None
    assert not xs.device_is_cross_signed(query, ALICE, "DEV")


def test_a_user_without_cross_signing_has_no_cross_signed_device() -> None:
    query = {"device_keys": {ALICE: {"DEV": _device()}}}
    assert xs.cross_signed_devices(query) == {(ALICE, "DEV"): False}


def test_keys_survive_secret_storage_form() -> None:
    keys = xs.CrossSigningKeys.generate()
    assert xs.CrossSigningKeys.from_secrets(keys.secrets()) == keys
    assert set(keys.secrets()) == {
        "m.cross_signing.master",
        "m.cross_signing.self_signing",
        "m.cross_signing.user_signing",
    }


def test_recovery_key_round_trip_and_typos() -> None:
    key = ss.new_key()
    text = ss.encode_recovery_key(key)
    assert text.startswith("Es")  # every Matrix recovery key does, from its header bytes
    assert all(len(group) == 4 for group in text.split()[:-1])
    assert ss.decode_recovery_key(text) == key
    assert ss.decode_recovery_key(text.replace(" ", "")) == key
    typo = text[:5] + ("2" if text[5] != "2" else "3") + text[6:]
    with pytest.raises(ss.SecretStorageError, match="check digit|header"):
        ss.decode_recovery_key(typo)
    with pytest.raises(ss.SecretStorageError, match="base58"):
        ss.decode_recovery_key("0OIl")
    with pytest.raises(ss.SecretStorageError, match="length"):
        ss.decode_recovery_key(text[:-8])


def test_secrets_decrypt_with_their_key_and_name_only() -> None:
    key = ss.new_key()
    encrypted = ss.encrypt("c2VjcmV0", key, "m.cross_signing.master")
    assert ss.decrypt(encrypted, key, "m.cross_signing.master") == "c2VjcmV0"
    assert ss.unb64(encrypted.iv)[8] & 0x80 == 0
    with pytest.raises(ss.SecretStorageError):
        ss.decrypt(encrypted, ss.new_key(), "m.cross_signing.master")
    with pytest.raises(ss.SecretStorageError):
        ss.decrypt(encrypted, key, "m.cross_signing.self_signing")


def test_a_key_description_recognises_its_key() -> None:
    key = ss.new_key()
    description = ss.key_description(key)
    assert description["algorithm"] == ss.ALGORITHM
    assert ss.key_opens(description, key)
    assert not ss.key_opens(description, ss.new_key())
