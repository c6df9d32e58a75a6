"""The bot's identity on its homeserver: its session (device and access token, reused across
starts) and its account's cross-signing keys, which Element requires since 2026 before it
shares room keys with a device. The private keys live in data_dir and, encrypted under the
recovery key, in the account's Secret Storage, so a bot whose data_dir is lost comes back as
itself and an admin can open the account in Element.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from nio import AsyncClient, AsyncClientConfig, LoginResponse, WhoamiResponse
from nio.store import DefaultStore

from bot import cross_signing as xs
from bot import secret_storage as ss
from bot.config import ENV_PASSWORD, ENV_RECOVERY_KEY, Config, MatrixConfig
from bot.faults import StorageFault, file_fault, key_store_fault

log = logging.getLogger(__name__)

SESSION_FILE = "session.json"
KEYS_FILE = "cross-signing.json"
RECOVERY_KEY_FILE = "recovery-key.txt"
API = "/_matrix/client/v3"


class FatalMatrixError(RuntimeError):
    """The bot cannot go on (bad credentials, revoked token, an identity it cannot prove);
    the message says what to do."""


@dataclass(frozen=True)
class Session:
    homeserver: str
    user_id: str
    device_id: str
    access_token: str


class CryptoStore(DefaultStore):
    """nio's key store, without a transaction on every sync: nio saves each sync's newly
    encrypted rooms even when there are none, and that empty transaction (its account row read
    through peewee, about a millisecond, on the event loop) sat between a command's arrival
    and its reply."""

    def save_encrypted_rooms(self, rooms: set[str]) -> None:
        if rooms:
            super().save_encrypted_rooms(rooms)


def bot_client(config: Config) -> AsyncClient:
    """The bot's nio client: its crypto store in data_dir, the sync token kept by the bot."""
    return AsyncClient(
        config.matrix.homeserver,
        config.matrix.user_id,
        store_path=str(config.storage.data_dir / "crypto"),
        config=AsyncClientConfig(
            store=CryptoStore,
            encryption_enabled=config.matrix.encryption,
            store_sync_tokens=False,  # the bot's own database keeps the token
            max_limit_exceeded=None,  # wait out every 429 as the server asks
            max_timeouts=2,  # then our own backoff takes over
            request_timeout=45,
        ),
    )


def write_private(path: Path, text: str) -> None:
    """Writes a file only its owner can read (mode 0600), whatever the umask, and durably.

    The session, the recovery key and the cross-signing keys are written once, at the first
    start: lost to a power cut soon after, the bot would come back as a new device, or not
    at all (an identity on the server and no keys for it). So the text goes to a file aside,
    synced, then renamed over the old one, and the rename is synced: a crash leaves the old
    file or the new one, complete.

    A disk that is full or read-only raises a StorageFault naming the file (the bot says so in
    one line and exits)."""
    aside = path.with_name(f".{path.name}.new")
    try:
        fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(aside, 0o600)
            os.replace(aside, path)
        except BaseException:
            aside.unlink(missing_ok=True)
            raise
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError as exc:
        raise file_fault(exc, path, f"writing {path}") from exc


def write_session(data_dir: Path, session: Session) -> None:
    """Saves the session, owner-only: it holds the access token."""
    write_private(data_dir / SESSION_FILE, json.dumps(asdict(session), indent=2))


def read_session(data_dir: Path) -> Session | None:
    """The saved session, or None when there is none or it cannot be read."""
    path = data_dir / SESSION_FILE
    try:
        return Session(**json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        log.warning("ignoring unreadable saved session %s: %s", path, exc)
        return None


async def api(
    client: AsyncClient, method: str, path: str, body: dict[str, Any] | None = None
) -> tuple[int, dict[str, Any]]:
    """One client-server API call that nio has no method for; returns status and JSON body."""
    status, data = await api_any(client, method, path, body)
    return status, data if isinstance(data, dict) else {}


async def api_any(
    client: AsyncClient, method: str, path: str, body: dict[str, Any] | None = None
) -> tuple[int, Any]:
    """The same, for the few endpoints that answer a JSON list."""
    resp = await client.send(
        method,
        API + path,
        None if body is None else json.dumps(body),
        headers={
            "Authorization": f"Bearer {client.access_token}",
            "Content-Type": "application/json",
        },
    )
    async with resp:
        try:
            return resp.status, await resp.json(content_type=None)
        except ValueError:
            return resp.status, None


async def query_keys(client: AsyncClient, users: set[str] | list[str]) -> dict[str, Any]:
    """`/keys/query` with the cross-signing keys, which nio's own keys_query drops."""
    status, data = await api(client, "POST", "/keys/query", {"device_keys": {u: [] for u in users}})
    if status != 200:
        raise FatalMatrixError(f"/keys/query failed ({status}): {data.get('error', data)}")
    return data


async def upload_keys(client: AsyncClient, keys: xs.CrossSigningKeys, password: str | None) -> None:
    """Makes `keys` the account's cross-signing keys. A first upload needs no password
    (MSC3967); replacing keys does, answered with `password` when there is one."""
    user_id = str(client.user_id)
    body = keys.upload_body(user_id)
    status, data = await api(client, "POST", "/keys/device_signing/upload", body)
    if status == 401 and "flows" in data:
        if not password:
            raise FatalMatrixError(_needs_password("replace the account's cross-signing keys"))
        body["auth"] = {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user_id},
            "password": password,
            "session": data.get("session"),
        }
        status, data = await api(client, "POST", "/keys/device_signing/upload", body)
    if status != 200:
        raise FatalMatrixError(
            f"uploading the cross-signing keys of {user_id} failed ({status}): "
            f"{data.get('error', data)}"
        )


async def sign_device(
    client: AsyncClient, keys: xs.CrossSigningKeys, query: dict[str, Any]
) -> None:
    """Signs this device with the self-signing key: the object signed is the device keys
    exactly as `/keys/query` returned them, less signatures and unsigned."""
    user_id, device_id = str(client.user_id), str(client.device_id)
    device = query.get("device_keys", {}).get(user_id, {}).get(device_id)
    if device is None:
        raise FatalMatrixError(
            f"the homeserver has no keys for device {device_id} to sign; "
            f"delete the saved session and start again"
        )
    signed = xs.sign(device, user_id, keys.self_signing)
    status, data = await api(
        client, "POST", "/keys/signatures/upload", {user_id: {device_id: signed}}
    )
    if status != 200 or data.get("failures"):
        raise FatalMatrixError(
            f"signing device {device_id} failed ({status}): {data.get('failures', data)}"
        )


async def cross_sign(client: AsyncClient, keys: xs.CrossSigningKeys, password: str | None) -> None:
    """For any client (the tests' people too): `keys` become the account's, this device is
    signed by them. Costs one /keys/query when that is so already."""
    user_id = str(client.user_id)
    query = await query_keys(client, [user_id])
    if xs.user_keys(query, user_id).master != keys.public(xs.MASTER):
        await upload_keys(client, keys, password)
        await sign_device(client, keys, query)
    elif not xs.device_is_cross_signed(query, user_id, str(client.device_id)):
        await sign_device(client, keys, query)


@dataclass(frozen=True)
class SavedKeys:
    """cross-signing.json: the private keys, and whether Secret Storage holds them yet."""

    keys: xs.CrossSigningKeys
    in_secret_storage: bool


class Identity:
    """Logs the bot in and makes its device one that Element trusts: cross-signed by the
    account, with the keys recoverable. `ensure()` costs one /keys/query when all is in order."""

    def __init__(self, client: AsyncClient, config: MatrixConfig, data_dir: Path) -> None:
        self.client = client
        self.config = config
        self.data_dir = data_dir
        self.session_path = data_dir / SESSION_FILE
        self.keys_path = data_dir / KEYS_FILE
        self.recovery_key_path = data_dir / RECOVERY_KEY_FILE

    @property
    def user_id(self) -> str:
        return str(self.client.user_id)

    # --- the session ---------------------------------------------------------------------

    def _load_session(self) -> Session | None:
        session = read_session(self.data_dir)
        if session is not None and (session.homeserver, session.user_id) != (
            self.config.homeserver,
            self.config.user_id,
        ):
            log.warning("saved session is for another account or homeserver; logging in again")
            return None
        return session

    async def login(self) -> None:
        """Reuses the saved device when there is one: a new device per start breaks E2EE.
        A disk that fails it (the session, nio's key store) raises a StorageFault."""
        crypto = self.data_dir / "crypto"
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(self.data_dir, 0o700)
            crypto.mkdir(exist_ok=True, mode=0o700)
        except OSError as exc:
            raise file_fault(exc, crypto, f"creating {crypto}") from exc
        try:
            await self._login()
        except StorageFault:
            raise
        except Exception as exc:
            # nio opens its key store (SQLite, in data_dir/crypto) as it logs in.
            keys = crypto / f"{self.client.user_id}_{self.client.device_id}.db"
            fault = key_store_fault(exc, keys, "nio's key store, at login")
            if fault is None:
                raise
            raise fault from exc

    async def _login(self) -> None:
        m = self.config
        session = self._load_session()
        if session is None and m.access_token:
            self.client.access_token = m.access_token
            who = await self.client.whoami()
            if not isinstance(who, WhoamiResponse) or not who.device_id:
                raise FatalMatrixError(
                    f"the configured access_token was refused by {m.homeserver}: {who}"
                )
            session = Session(m.homeserver, who.user_id, who.device_id, m.access_token)
            write_session(self.data_dir, session)
        elif session is None:
            resp = await self.client.login(m.password, device_name=m.device_name)
            if not isinstance(resp, LoginResponse):
                why = getattr(resp, "message", resp)
                raise FatalMatrixError(f"login as {m.user_id} on {m.homeserver} failed: {why}")
            session = Session(m.homeserver, resp.user_id, resp.device_id, resp.access_token)
            write_session(self.data_dir, session)
            log.info("logged in as %s, new device %s", resp.user_id, resp.device_id)
        self.client.restore_login(session.user_id, session.device_id, session.access_token)
        log.info("using device %s of %s", session.device_id, session.user_id)
        if self.client.should_upload_keys:
            await self.client.keys_upload()

    # --- cross-signing -------------------------------------------------------------------

    async def ensure(self) -> None:
        """After login: the account has cross-signing keys this bot holds, and this device
        is signed by them. Creates them on first start, restores them from Secret Storage
        when data_dir was lost, and refuses to start when it cannot prove who it is."""
        query = await query_keys(self.client, [self.user_id])
        on_server = xs.user_keys(query, self.user_id).master
        saved = self._load_keys()
        if saved is not None and saved.keys.public(xs.MASTER) == on_server:
            keys = saved.keys
            if not saved.in_secret_storage:  # an earlier start stopped half-way
                await self._store_in_secret_storage(keys, self._new_or_known_recovery_key())
        elif on_server is None:
            keys = saved.keys if saved is not None else xs.CrossSigningKeys.generate()
            await self._publish(keys, self._new_or_known_recovery_key())
            log.info(
                "created the account's cross-signing identity (master key %s)",
                keys.public(xs.MASTER),
            )
        else:
            keys = await self._restore(on_server, changed=saved is not None)
        if not xs.device_is_cross_signed(query, self.user_id, str(self.client.device_id)):
            await self._sign_device(query, keys)

    async def reset(self) -> Path | None:
        """A new cross-signing identity on purpose (the old recovery key is lost). Returns
        the file the new recovery key was written to, or None if it is the configured one."""
        if not self.config.password:
            raise FatalMatrixError(_needs_password("replace the account's cross-signing keys"))
        generated = self.config.recovery_key is None
        recovery = ss.new_key() if generated else self._recovery_key()
        assert recovery is not None
        if generated:
            self._write_recovery_key(recovery)
        keys = xs.CrossSigningKeys.generate()
        await self._publish(keys, recovery)
        await self._sign_device(await query_keys(self.client, [self.user_id]), keys)
        return self.recovery_key_path if generated else None

    async def _publish(self, keys: xs.CrossSigningKeys, recovery: bytes) -> None:
        """Saved here first (a crash must not lose keys the server has), then uploaded, then
        put in Secret Storage."""
        self._save_keys(SavedKeys(keys, in_secret_storage=False))
        await upload_keys(self.client, keys, self.config.password)
        await self._store_in_secret_storage(keys, recovery)

    async def _sign_device(self, query: dict[str, Any], keys: xs.CrossSigningKeys) -> None:
        await sign_device(self.client, keys, query)
        log.info("signed this device with the account's self-signing key")

    # --- Secret Storage ------------------------------------------------------------------

    async def _store_in_secret_storage(self, keys: xs.CrossSigningKeys, recovery: bytes) -> None:
        key_id = secrets.token_hex(16)
        await self._put_account_data(ss.KEY_PREFIX + key_id, ss.key_description(recovery))
        for name, secret in keys.secrets().items():
            encrypted = ss.encrypt(secret, recovery, name)
            await self._put_account_data(name, {"encrypted": {key_id: encrypted.to_json()}})
        # Last: the default key names a storage that is complete.
        await self._put_account_data(ss.DEFAULT_KEY, {"key": key_id})
        self._save_keys(SavedKeys(keys, in_secret_storage=True))

    async def _restore(self, master: str, *, changed: bool) -> xs.CrossSigningKeys:
        recovery = self._recovery_key()
        why = (
            "its cross-signing identity was replaced since this data_dir was written"
            if changed
            else f"{self.keys_path} is missing (a new or lost data_dir)"
        )
        if recovery is None:
            raise FatalMatrixError(
                f"{self.user_id} already has a cross-signing identity, but {why} and no "
                f"recovery key is configured. Give the bot its recovery key (matrix.recovery_key, "
                f"matrix.recovery_key_file or {ENV_RECOVERY_KEY}) to restore it, or replace the "
                f"identity on purpose with: onboarding-bot reset-identity --config PATH "
                f"(newcomers will see that the bot's identity changed)"
            )
        try:
            keys = await self._read_secret_storage(recovery)
        except ss.SecretStorageError as exc:
            raise FatalMatrixError(f"cannot restore the cross-signing keys: {exc}") from None
        if keys.public(xs.MASTER) != master:
            raise FatalMatrixError(
                "the keys in Secret Storage are not the account's current cross-signing keys; "
                "run onboarding-bot reset-identity --config PATH to make a new identity"
            )
        self._save_keys(SavedKeys(keys, in_secret_storage=True))
        log.info("restored the account's cross-signing keys from Secret Storage")
        return keys

    async def _read_secret_storage(self, recovery: bytes) -> xs.CrossSigningKeys:
        default = await self._get_account_data(ss.DEFAULT_KEY)
        key_id = default.get("key") if default else None
        if not isinstance(key_id, str):
            raise ss.SecretStorageError("the account has no Secret Storage")
        description = await self._get_account_data(ss.KEY_PREFIX + key_id) or {}
        if not ss.key_opens(description, recovery):
            raise ss.SecretStorageError("the recovery key is not the account's (wrong key?)")
        found = {}
        for name in (xs.secret_name(kind) for kind in xs.KINDS):
            stored = await self._get_account_data(name) or {}
            encrypted = stored.get("encrypted", {}).get(key_id)
            if encrypted is None:
                raise ss.SecretStorageError(f"Secret Storage holds no {name}")
            found[name] = ss.decrypt(ss.Encrypted.from_json(encrypted), recovery, name)
        return xs.CrossSigningKeys.from_secrets(found)

    def _account_data_path(self, kind: str) -> str:
        return f"/user/{quote(self.user_id)}/account_data/{quote(kind)}"

    async def _get_account_data(self, kind: str) -> dict[str, Any] | None:
        status, data = await api(self.client, "GET", self._account_data_path(kind))
        if status == 404:
            return None
        if status != 200:
            raise FatalMatrixError(f"reading account data {kind} failed ({status}): {data}")
        return data

    async def _put_account_data(self, kind: str, content: dict[str, Any]) -> None:
        status, data = await api(self.client, "PUT", self._account_data_path(kind), content)
        if status != 200:
            raise FatalMatrixError(f"writing account data {kind} failed ({status}): {data}")

    # --- files in data_dir ---------------------------------------------------------------

    def _new_or_known_recovery_key(self) -> bytes:
        """The recovery key if there is one, else a new one (written to recovery-key.txt)."""
        known = self._recovery_key()
        if known is not None:
            return known
        key = ss.new_key()
        self._write_recovery_key(key)
        return key

    def _recovery_key(self) -> bytes | None:
        """The configured recovery key, else the one generated here before."""
        text = self.config.recovery_key
        if text is None and self.recovery_key_path.exists():
            text = self.recovery_key_path.read_text(encoding="utf-8")
        if text is not None:
            try:
                return ss.decode_recovery_key(text)
            except ss.SecretStorageError as exc:
                raise FatalMatrixError(f"{self.recovery_key_path}: {exc}") from None
        return None

    def _write_recovery_key(self, key: bytes) -> None:
        write_private(self.recovery_key_path, ss.encode_recovery_key(key) + "\n")
        log.warning(
            "generated the bot's recovery key in %s: move it to your secret store now and "
            "configure it as matrix.recovery_key_file or %s; without it a lost data_dir "
            "means a new identity",
            self.recovery_key_path,
            ENV_RECOVERY_KEY,
        )

    def _load_keys(self) -> SavedKeys | None:
        try:
            data = json.loads(self.keys_path.read_text(encoding="utf-8"))
            return SavedKeys(
                xs.CrossSigningKeys.from_secrets(data["keys"]), bool(data["in_secret_storage"])
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise FatalMatrixError(
                f"{self.keys_path} is unreadable ({exc}); remove it to restore the keys "
                f"from Secret Storage with the recovery key"
            ) from None

    def _save_keys(self, saved: SavedKeys) -> None:
        data = {"keys": saved.keys.secrets(), "in_secret_storage": saved.in_secret_storage}
        write_private(self.keys_path, json.dumps(data, indent=2))


def _needs_password(what: str) -> str:
    return (
        f"to {what} the homeserver asks for the account password: set matrix.password or "
        f"matrix.password_file (or {ENV_PASSWORD}) for this run, then start again"
    )
