"""An Element-like user for integration tests: matrix-js-sdk + Rust crypto in a Node process.

``tests/element/client.mjs`` is the client; this module starts it, speaks its JSON-lines
protocol and turns its answers into ``ElementMessage`` values and readable assertion errors.
"""

# Explicit ``timeout=`` arguments are this harness's API: each wait fails with its own message.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest

from .synapse import Synapse, account, closing_all

__all__ = [
    "CLIENT_DIR",
    "ElementMessage",
    "ElementPerson",
    "ElementPoll",
    "Isolation",
    "MakeElementPerson",
    "Shield",
    "element_people",
    "trustworthy",
]

#: The Node package holding the client; ``make test`` runs ``npm ci`` in it.
CLIENT_DIR = Path(__file__).resolve().parents[1] / "element"
_SCRIPT = CLIENT_DIR / "client.mjs"
_LOG_TAIL_LINES = 30
# Slack on top of the client's own timeout, so its descriptive error wins over ours.
_ANSWER_SLACK_S = 10.0
_STOP_GRACE_S = 5.0

#: Element's device isolation modes: ``only_signed`` ("exclude insecure devices", the 2026
#: default) or ``all`` (the older behaviour: share with and decrypt from every device).
Isolation = Literal["only_signed", "all"]


@dataclass(frozen=True)
class Shield:
    """The shield Element draws next to a message: ``colour`` NONE, GREY or RED.

    ``reason`` is a js-sdk ``EventShieldReason`` name (``UNSIGNED_DEVICE``, ``UNKNOWN_DEVICE``,
    ``UNVERIFIED_IDENTITY``, ``AUTHENTICITY_NOT_GUARANTEED``, ``SENT_IN_CLEAR``, ...) or None.
    """

    colour: str
    reason: str | None


#: No warning at all: what a trustworthy encrypted message looks like in Element.
NO_SHIELD = Shield("NONE", None)


@dataclass(frozen=True)
class ElementMessage:
    """One ``m.room.message`` (or undecryptable encrypted event) from another user, as seen."""

    room_id: str
    event_id: str
    sender: str
    body: str
    msgtype: str
    content: dict[str, Any] = field(hash=False)
    encrypted: bool
    #: A js-sdk ``DecryptionFailureCode`` (``UNSIGNED_SENDER_DEVICE``,
    #: ``MEGOLM_UNKNOWN_INBOUND_SESSION_ID``, ...) once decryption has settled, or None.
    decryption_failure: str | None
    #: js-sdk's explanation of the failure, or None.
    decryption_error: str | None
    #: None when the event could not be decrypted (Element shows "Unable to decrypt" instead).
    shield: Shield | None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ElementMessage:
        shield = data.get("shield")
        return cls(
            room_id=data["room_id"],
            event_id=data["event_id"],
            sender=data["sender"],
            body=data["body"],
            msgtype=data["msgtype"],
            content=dict(data["content"]),
            encrypted=bool(data["encrypted"]),
            decryption_failure=data["decryption_failure"],
            decryption_error=data.get("decryption_error"),
            shield=Shield(shield["colour"], shield["reason"]) if shield else None,
        )


def trustworthy(message: ElementMessage) -> ElementMessage:
    """Encrypted, decrypted, and with no warning shield next to it in Element."""
    assert message.encrypted and message.decryption_failure is None, message
    assert message.shield == NO_SHIELD, f"{message.body!r} shown under a shield: {message.shield}"
    return message


@dataclass(frozen=True)
class ElementPoll:
    """A poll start (MSC3381) from another user, as Element reads it."""

    room_id: str
    event_id: str
    sender: str
    #: The event type once decrypted (``org.matrix.msc3381.poll.start`` as Element sends it).
    type: str
    #: The (decrypted) content as sent.
    content: dict[str, Any] = field(hash=False)
    #: Element's poll tile would render it: it parses as matrix-events-sdk's PollStartEvent.
    renders: bool
    #: As parsed by Element (None / empty unless ``renders``).
    question: str | None
    #: ``{"id": ..., "text": ...}`` for each answer, in order.
    answers: tuple[dict[str, str], ...] = field(hash=False)
    #: The raw poll kind (``org.matrix.msc3381.poll.disclosed``, ...) and max selections.
    kind: str | None
    max_selections: int | None
    encrypted: bool
    shield: Shield | None
    #: js-sdk built its Poll model for it (what Element's tile reads votes and the end from).
    poll_model: bool

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ElementPoll:
        shield = data.get("shield")
        return cls(
            room_id=data["room_id"],
            event_id=data["event_id"],
            sender=data["sender"],
            type=data["type"],
            content=dict(data["content"]),
            renders=bool(data["renders"]),
            question=data["question"],
            answers=tuple(dict(a) for a in data["answers"]),
            kind=data["kind"],
            max_selections=data["max_selections"],
            encrypted=bool(data["encrypted"]),
            shield=Shield(shield["colour"], shield["reason"]) if shield else None,
            poll_model=bool(data["poll_model"]),
        )


class ElementClientError(AssertionError):
    """The Node client reported a failure (or died); the message carries its log tail."""


class ElementPerson:
    """One logged-in Element-like device, run as a Node child process.

    Every ``m.room.message`` from other users that arrives after login is queued per room
    inside the client and handed out by :meth:`reply`, in order, each once.
    """

    def __init__(self, process: asyncio.subprocess.Process, log_path: Path, label: str) -> None:
        self._process = process
        self._log_path = log_path
        self._label = label
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._reader = asyncio.create_task(self._read_answers(), name=f"element-{label}")
        self._stray: list[str] = []
        self.user_id = ""
        self.device_id = ""

    # ------------------------------------------------------------ lifecycle

    @classmethod
    async def login(
        cls,
        synapse_url: str,
        user_id: str,
        password: str,
        log_dir: Path,
        *,
        isolation: Isolation = "only_signed",
        cross_sign: bool = True,
        device_name: str = "element-like test client",
        timeout: float = 60.0,
    ) -> ElementPerson:
        """Start a Node client, log in a new device, set up crypto and wait for the first sync.

        With ``cross_sign`` the device creates the user's cross-signing identity and signs
        itself, as Element does after the first login. If the user already had an identity it
        is replaced, so the user's earlier devices are no longer signed; with
        ``cross_sign=False`` the device stays unsigned (a "second device" never verified).
        """
        node = shutil.which("node")
        if node is None:
            raise AssertionError("the Element-like client needs Node.js (`node`) on PATH")
        if not (CLIENT_DIR / "node_modules" / "matrix-js-sdk").is_dir():
            raise AssertionError(
                f"{CLIENT_DIR}/node_modules is missing: run `make test`, or "
                f"`npm ci --prefix tests/element` in the repository"
            )
        log_dir.mkdir(parents=True, exist_ok=True)
        localpart = user_id.split(":")[0].lstrip("@")
        log_path = log_dir / f"element-{localpart}-{device_name.replace(' ', '_')}.log"
        with log_path.open("ab") as log:
            process = await asyncio.create_subprocess_exec(
                node,
                str(_SCRIPT),
                cwd=CLIENT_DIR,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                # One answer is one line; a message with a large content must still fit.
                limit=16 * 1024 * 1024,
            )
        person = cls(process, log_path, user_id)
        try:
            answer = await person._call(
                "login",
                timeout,
                homeserver=synapse_url,
                user_id=user_id,
                password=password,
                device_name=device_name,
                isolation=isolation,
                cross_sign=cross_sign,
            )
        except BaseException:
            await person.close()
            raise
        person.user_id = answer["user_id"]
        person.device_id = answer["device_id"]
        person._label = f"{person.user_id} ({person.device_id}, {isolation})"
        return person

    async def close(self) -> None:
        """Ask the client to stop; kill it if it does not exit promptly. Always safe to call."""
        process = self._process
        if process.returncode is None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._call("stop", 0.0), _STOP_GRACE_S)
            try:
                await asyncio.wait_for(process.wait(), _STOP_GRACE_S)
            except TimeoutError:
                process.kill()
                await process.wait()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader

    def __repr__(self) -> str:
        return f"ElementPerson({self._label})"

    @property
    def log_path(self) -> Path:
        return self._log_path

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The end of the client's log without the Rust crypto's DEBUG records, which drown
        everything else (the full log stays in :attr:`log_path`)."""
        try:
            text = self._log_path.read_text(errors="replace")
        except OSError as exc:
            return f"<no log: {exc}>"
        kept: list[str] = []
        in_debug = False
        for line in text.splitlines():
            # A Rust tracing record is a "LEVEL target: message" line plus indented fields.
            if line.startswith("DEBUG "):
                in_debug = True
            elif not (in_debug and line.startswith(" ")):
                in_debug = False
                kept.append(line)
        return "\n".join(kept[-lines:])

    # ------------------------------------------------------------- protocol

    async def _read_answers(self) -> None:
        assert self._process.stdout is not None
        while line := await self._process.stdout.readline():
            try:
                message = json.loads(line)
            except ValueError:
                self._stray.append(line.decode(errors="replace").rstrip())
                continue
            future = self._pending.pop(message.get("id"), None) if message.get("id") else None
            if future is None:
                self._stray.append(str(message))
            elif not future.done():
                if "error" in message:
                    future.set_exception(self._error(message["error"]))
                else:
                    future.set_result(message.get("result"))
        # stdout closed: the client exited; nothing pending will ever be answered.
        code = await self._process.wait()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(self._error(f"the Node client exited with code {code}"))
        self._pending.clear()

    def _error(self, what: str) -> ElementClientError:
        stray = f"\nunexpected output: {self._stray[-5:]}" if self._stray else ""
        return ElementClientError(
            f"{self._label}: {what}{stray}\n--- {self._log_path} (tail) ---\n{self.log_tail()}"
        )

    async def _call(self, op: str, timeout: float, **args: Any) -> Any:
        if self._process.returncode is not None or self._reader.done():
            raise self._error(f"cannot {op}: the Node client has exited")
        request_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        assert self._process.stdin is not None
        self._process.stdin.write(json.dumps({"id": request_id, "op": op, **args}).encode() + b"\n")
        try:
            await self._process.stdin.drain()
            return await asyncio.wait_for(future, timeout + _ANSWER_SLACK_S)
        except TimeoutError:
            raise self._error(f"{op} got no answer within {timeout + _ANSWER_SLACK_S}s") from None
        except (BrokenPipeError, ConnectionResetError):
            raise self._error(f"cannot {op}: the Node client has exited") from None
        finally:
            self._pending.pop(request_id, None)

    # ---------------------------------------------------------------- rooms

    async def create_dm(
        self, user_id: str, *, encrypted: bool = True, timeout: float = 15.0
    ) -> str:
        """Start a direct chat with ``user_id`` as Element does; return the room id once synced."""
        return str(
            await self._call(
                "create_dm", timeout, user_id=user_id, encrypted=encrypted, timeout_ms=_ms(timeout)
            )
        )

    async def create_room(
        self,
        name: str | None = None,
        invite: list[str] | None = None,
        *,
        encrypted: bool = True,
        timeout: float = 15.0,
    ) -> str:
        """Create a private (non-direct) room, inviting ``invite``; return its id once synced."""
        return str(
            await self._call(
                "create_room",
                timeout,
                name=name,
                invite=invite or [],
                encrypted=encrypted,
                timeout_ms=_ms(timeout),
            )
        )

    async def join(self, room_id: str, timeout: float = 15.0) -> None:
        """Join (or accept the invitation to) a room and wait until sync reflects it."""
        await self._call("join", timeout, room_id=room_id, timeout_ms=_ms(timeout))

    async def wait_for_join(self, room_id: str, user_id: str, timeout: float = 15.0) -> None:
        """Wait until ``user_id`` is a joined member of ``room_id`` as this client syncs it."""
        await self._call(
            "wait_for_join", timeout, room_id=room_id, user_id=user_id, timeout_ms=_ms(timeout)
        )

    async def wait_for_invite(self, inviter: str | None = None, timeout: float = 15.0) -> str:
        """Wait for an invitation not returned before (optionally from ``inviter``); its room id."""
        return str(
            await self._call("wait_for_invite", timeout, inviter=inviter, timeout_ms=_ms(timeout))
        )

    async def user_devices(self, user_id: str) -> dict[str, Any]:
        """How this client sees ``user_id``'s devices: ``has_cross_signing``, ``devices``
        (each with ``device_id``, ``signed_by_owner``, ``cross_signing_verified``).

        The trust fields are None unless this client shares an encrypted room with the user
        (js-sdk only tracks, and so only judges, the devices of such users).
        """
        return dict(await self._call("user_devices", 15.0, user_id=user_id))

    async def verify_with_recovery_key(self, recovery_key: str) -> dict[str, Any]:
        """Element's "Verify with recovery key" on this session: reads the account's
        cross-signing keys from Secret Storage and signs this device with them. Returns
        ``ready``, ``private_keys_in_secret_storage`` and ``private_keys_cached``; fails unless the
        homeserver then holds this device's signature by the account's self-signing key.
        """
        return dict(await self._call("verify_with_recovery_key", 30.0, recovery_key=recovery_key))

    # ------------------------------------------------------------- messages

    async def say(self, room_id: str, text: str, timeout: float = 30.0) -> str:
        """Send an ``m.text`` message (encrypted if the room is); return its event id."""
        return str(await self._call("send_text", timeout, room_id=room_id, body=text))

    async def reply(
        self, room_id: str, timeout: float = 30.0, *, allow_undecryptable: bool = False
    ) -> ElementMessage:
        """The next message another user sent to ``room_id``, once its decryption settled.

        A message whose room key is missing is waited on until ``timeout``; a decryption
        failure still there by then (or one js-sdk never retries, such as
        ``UNSIGNED_SENDER_DEVICE``) raises ``AssertionError`` unless ``allow_undecryptable``.
        """
        data = await self._call("next_message", timeout, room_id=room_id, timeout_ms=_ms(timeout))
        message = ElementMessage.from_json(data)
        if message.decryption_failure and not allow_undecryptable:
            raise self._error(
                f"cannot decrypt {message.event_id} from {message.sender} in {room_id}: "
                f"{message.decryption_failure} ({message.decryption_error})"
            )
        return message

    async def no_more_replies(self, room_id: str, wait: float = 2.0) -> None:
        """Assert that no further message from others arrives in ``room_id`` within ``wait`` s."""
        data = await self._call(
            "next_message", wait, room_id=room_id, timeout_ms=_ms(wait), allow_timeout=True
        )
        if data is not None:
            extra = ElementMessage.from_json(data)
            raise AssertionError(
                f"{self._label} expected no more messages in {room_id}, but got "
                f"{extra.sender}: {extra.body or extra.decryption_failure!r}"
            )

    # ------------------------------------------------- reactions and polls

    async def send_reaction(
        self, room_id: str, event_id: str, key: str, timeout: float = 30.0
    ) -> str:
        """React to ``event_id`` with ``key`` as Element does (an ``m.reaction`` annotation,
        sent in the clear even in an encrypted room, as js-sdk does); return its event id."""
        return str(
            await self._call("send_reaction", timeout, room_id=room_id, event_id=event_id, key=key)
        )

    async def reactions_on(
        self,
        room_id: str,
        event_id: str,
        sender: str,
        *,
        at_least: int = 1,
        timeout: float = 15.0,
    ) -> list[str]:
        """The keys of the reactions ``sender`` put on ``event_id`` (decrypted where encrypted),
        in arrival order, once at least ``at_least`` arrived or ``timeout`` passed (then what
        there is, maybe nothing: this wait does not fail)."""
        keys = await self._call(
            "reactions_on",
            timeout,
            room_id=room_id,
            event_id=event_id,
            sender=sender,
            at_least=at_least,
            timeout_ms=_ms(timeout),
        )
        return [str(key) for key in keys]

    async def next_poll(self, room_id: str, timeout: float = 30.0) -> ElementPoll:
        """The next poll start another user sent to ``room_id`` (each returned once)."""
        data = await self._call("next_poll", timeout, room_id=room_id, timeout_ms=_ms(timeout))
        return ElementPoll.from_json(data)

    async def send_poll_response(
        self, room_id: str, poll_event_id: str, answer_id: str, timeout: float = 30.0
    ) -> str:
        """Tap answer ``answer_id`` in the poll, as Element's poll tile does (a
        ``org.matrix.msc3381.poll.response`` referencing it); return its event id."""
        return str(
            await self._call(
                "send_poll_response",
                timeout,
                room_id=room_id,
                poll_event_id=poll_event_id,
                answer_id=answer_id,
            )
        )

    async def poll_ended(self, room_id: str, poll_event_id: str, timeout: float = 15.0) -> bool:
        """Whether an end event from another user for the poll arrived within ``timeout``."""
        return bool(
            await self._call(
                "poll_ended",
                timeout,
                room_id=room_id,
                poll_event_id=poll_event_id,
                timeout_ms=_ms(timeout),
            )
        )


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


#: Type of a ``make_element`` fixture:
#: ``await make_element("alice", isolation="only_signed", cross_sign=True, server=None)``.
MakeElementPerson = Callable[..., Awaitable[ElementPerson]]


@asynccontextmanager
async def element_people(
    synapse: Synapse, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[MakeElementPerson]:
    """A factory for Element-like users that closes every one of them on exit.

    Accounts follow the ``make_person`` convention (password ``<localpart>-password``,
    registered on first use), so one account can hold nio and Element devices side by side.
    """

    async def login(
        localpart: str,
        *,
        isolation: Isolation = "only_signed",
        cross_sign: bool = True,
        device_name: str = "element-like test client",
        server: Synapse | None = None,
    ) -> ElementPerson:
        server = server or synapse
        user_id, password = await account(server, localpart)
        return await ElementPerson.login(
            server.url,
            user_id,
            password,
            tmp_path_factory.mktemp(f"element-{localpart}"),
            isolation=isolation,
            cross_sign=cross_sign,
            device_name=device_name,
        )

    async with closing_all(login) as factory:
        yield factory
