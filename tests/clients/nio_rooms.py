"""Drives room creation, invites, joins, sending and pagination with matrix-nio against a
tuwunel test server. Prints OK on success; failures raise.

Usage: nio_rooms.py <homeserver URL>
"""

import asyncio
import sys

from nio import (
    AsyncClient,
    JoinResponse,
    RoomCreateResponse,
    RoomGetStateResponse,
    RoomInviteResponse,
    RoomMessagesResponse,
    RoomSendResponse,
)


def check(response, kind):
    if not isinstance(response, kind):
        raise SystemExit(f"expected {kind.__name__}, got {response!r}")
    return response


async def account(homeserver: str, name: str) -> AsyncClient:
    client = AsyncClient(homeserver, name)
    response = await client.register(name, "pw", device_name=f"{name}'s nio")
    if not getattr(response, "access_token", None):
        raise SystemExit(f"registering {name} failed: {response!r}")
    return client


async def main(homeserver: str) -> None:
    alice = await account(homeserver, "nioroomalice")
    bob = await account(homeserver, "nioroombob")

    created = check(await alice.room_create(name="nio room", topic="made by nio"), RoomCreateResponse)
    room_id = created.room_id
    check(await alice.room_invite(room_id, bob.user_id), RoomInviteResponse)
    check(await bob.join(room_id), JoinResponse)

    sent = []
    for index in range(25):
        response = check(
            await alice.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": f"message {index}"}),
            RoomSendResponse,
        )
        sent.append(response.event_id)

    # Bob pages backwards through everything in chunks of 10.
    seen = []
    start = ""
    for _ in range(20):
        page = check(await bob.room_messages(room_id, start=start, limit=10), RoomMessagesResponse)
        seen.extend(event.event_id for event in page.chunk if getattr(event, "body", None) is not None)
        if not page.end or not page.chunk:
            break
        start = page.end
    assert list(reversed(seen)) == sent, (seen, sent)

    state = check(await bob.room_get_state(room_id), RoomGetStateResponse)
    names = [event["content"].get("name") for event in state.events if event["type"] == "m.room.name"]
    assert names == ["nio room"], names

    await bob.room_leave(room_id)
    for client in (alice, bob):
        await client.close()
    print("OK")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
