"""End-to-end encryption upkeep shared by every nio client here (the bot, the chat client, the
tests' people), and the bot's judgement of other people's devices: Element's "exclude insecure
devices" (MSC4153), which nio does not know. nio keeps the device list; this decides trust.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from nio import AsyncClient, KeysQueryResponse, MatrixRoom
from nio.crypto import OlmDevice

from bot.cross_signing import cross_signed_devices
from bot.identity import query_keys

log = logging.getLogger(__name__)


class DeviceTrust:
    """Which devices their owners cross-signed, kept as trust states in nio's device store
    (so it survives restarts): cross-signed devices verified, the others blacklisted while
    insecure devices are excluded. nio then shares room keys only with the verified ones."""

    def __init__(self, client: AsyncClient, *, exclude_insecure: bool) -> None:
        self.client = client
        self.exclude_insecure = exclude_insecure

    async def query(self, users: Iterable[str]) -> None:
        """One /keys/query for `users`: nio learns their devices, this their cross-signing."""
        users = set(users)
        if not users:
            return
        body = await query_keys(self.client, users)
        response = KeysQueryResponse.from_dict(body)
        if isinstance(response, KeysQueryResponse):
            await self.client.receive_response(response)
        judged = cross_signed_devices(body)
        for user in users:
            for device in self.client.device_store.active_user_devices(user):
                self._apply(device, judged.get((user, device.id), False))

    def _apply(self, device: OlmDevice, cross_signed: bool) -> None:
        client = self.client
        assert client.olm is not None
        if not self.exclude_insecure:
            if client.olm.is_device_blacklisted(device):
                client.unblacklist_device(device)  # excluded while the option was on
        elif cross_signed:
            if client.verify_device(device):
                log.debug("device %s of %s is cross-signed", device.id, device.user_id)
        elif client.blacklist_device(device):
            log.info(
                "excluding an insecure device (not cross-signed by its owner) from room keys",
                extra={"sender": device.user_id, "device": device.id},
            )

    def judged(self, device: OlmDevice) -> bool:
        olm = self.client.olm
        assert olm is not None
        return olm.is_device_verified(device) or olm.is_device_blacklisted(device)

    def is_secure(self, device: OlmDevice) -> bool:
        """Cross-signed by its owner (verified here because it is)."""
        olm = self.client.olm
        assert olm is not None
        return olm.is_device_verified(device)

    def unjudged_users(self, room: MatrixRoom) -> set[str]:
        """Members of `room` with a device not judged yet: to query before a room key is
        shared. Empty (no work) unless insecure devices are excluded."""
        if not self.exclude_insecure:
            return set()
        store = self.client.device_store
        return {
            user
            for user in room.users  # the bot's own other devices too
            if any(not self.judged(d) for d in store.active_user_devices(user))
        }

    def sender_device(self, user_id: str, sender_key: str | None) -> OlmDevice | None:
        """The device that sent a decrypted event, known by its Curve25519 key."""
        for device in self.client.device_store.active_user_devices(user_id):
            if device.curve25519 == sender_key:
                return device
        return None


async def maintain_keys(client: AsyncClient, trust: DeviceTrust | None = None) -> None:
    """The key housekeeping nio's sync_forever does between syncs: queued to-device messages
    out, our one-time keys up, other devices' keys fetched (and judged, given a trust),
    Olm sessions claimed."""
    await client.send_to_device_messages()
    if client.should_upload_keys:
        await client.keys_upload()
    if client.should_query_keys:
        if trust is None:
            await client.keys_query()
        else:
            await trust.query(client.users_for_key_query)
    if client.should_claim_keys:
        await client.keys_claim(client.get_users_for_key_claiming())
