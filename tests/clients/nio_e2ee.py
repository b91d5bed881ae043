"""End-to-end encryption through our server with matrix-nio (vodozemac): two users in an
encrypted room; Alice sends, Bob decrypts. Prints OK on success; failures raise.

Usage: nio_e2ee.py <homeserver URL> <scratch directory>
"""

import asyncio
import os
import sys

from nio import (
    AsyncClient,
    AsyncClientConfig,
    JoinResponse,
    LoginResponse,
    MegolmEvent,
    RoomCreateResponse,
    RoomInviteResponse,
    RoomMessageText,
    RoomSendResponse,
)

ENCRYPTED_ROOM = [{"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}]


def check(response, kind):
    if not isinstance(response, kind):
        raise SystemExit(f"expected {kind.__name__}, got {response!r}")
    return response


async def account(homeserver: str, scratch: str, name: str) -> AsyncClient:
    registrar = AsyncClient(homeserver, name)
    registered = await registrar.register(name, "pw", device_name=f"{name}'s nio")
    if not getattr(registered, "access_token", None):
        raise SystemExit(f"registering {name} failed: {registered!r}")
    await registrar.close()
    store = os.path.join(scratch, name)
    os.makedirs(store, exist_ok=True)
    config = AsyncClientConfig(encryption_enabled=True, store_sync_tokens=True)
    client = AsyncClient(homeserver, name, store_path=store, config=config)
    check(await client.login("pw", device_name=f"{name}'s encrypted nio"), LoginResponse)
    if client.should_upload_keys:
        await client.keys_upload()
    return client


async def main(homeserver: str, scratch: str) -> None:
    alice = await account(homeserver, scratch, "nioe2ealice")
    bob = await account(homeserver, scratch, "nioe2ebob")

    created = check(await alice.room_create(name="secret", initial_state=ENCRYPTED_ROOM), RoomCreateResponse)
    room_id = created.room_id
    check(await alice.room_invite(room_id, bob.user_id), RoomInviteResponse)
    await bob.sync(timeout=0, full_state=True)
    check(await bob.join(room_id), JoinResponse)

    # Both learn the room, its members and each other's devices.
    for client in (alice, bob):
        await client.sync(timeout=0, full_state=True)
    for client in (alice, bob):
        if client.should_query_keys:
            await client.keys_query()
        if client.should_upload_keys:
            await client.keys_upload()
    if not alice.rooms[room_id].encrypted:
        raise SystemExit("the room is not encrypted in Alice's view")
    if bob.device_id not in alice.device_store[bob.user_id]:
        raise SystemExit(f"Alice does not know Bob's device: {alice.device_store[bob.user_id]!r}")

    secret = "the eagle lands at dawn"
    check(
        await alice.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": secret}, ignore_unverified_devices=True),
        RoomSendResponse,
    )

    # Bob receives the room key over to-device and the ciphertext in the timeline.
    for _ in range(20):
        response = await bob.sync(timeout=1000)
        room = response.rooms.join.get(room_id)
        for event in room.timeline.events if room else []:
            if isinstance(event, RoomMessageText) and event.body == secret:
                print("OK")
                await alice.close()
                await bob.close()
                return
            if isinstance(event, MegolmEvent):
                raise SystemExit(f"Bob could not decrypt: {event!r}")
    raise SystemExit("Bob never received the message")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
