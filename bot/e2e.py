"""End-to-end encryption upkeep shared by every nio client here (the bot, the chat client)."""

from __future__ import annotations

from nio import AsyncClient


async def maintain_keys(client: AsyncClient) -> None:
    """The key housekeeping nio's sync_forever does between syncs: queued to-device messages
    out, our one-time keys up, other devices' keys fetched, Olm sessions claimed."""
    await client.send_to_device_messages()
    if client.should_upload_keys:
        await client.keys_upload()
    if client.should_query_keys:
        await client.keys_query()
    if client.should_claim_keys:
        await client.keys_claim(client.get_users_for_key_claiming())
