"""Keeps matrix-nio's sync loop running for one user while another talks, types and reads:
every message arrives once, in order, through long polls. Prints OK on success.

Usage: nio_sync_loop.py <homeserver URL>
"""

import asyncio
import sys
import time

from nio import AsyncClient, JoinResponse, RoomCreateResponse, RoomMessageText, RoomSendResponse, TypingNoticeEvent

MESSAGES = 30


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
    alice = await account(homeserver, "nioloopalice")
    bob = await account(homeserver, "nioloopbob")
    room_id = check(await alice.room_create(name="chatter"), RoomCreateResponse).room_id
    await alice.room_invite(room_id, bob.user_id)
    check(await bob.join(room_id), JoinResponse)

    received = []
    typing_seen = asyncio.Event()
    all_received = asyncio.Event()
    latencies = []
    sent_at = {}

    async def on_message(room, event):
        if room.room_id == room_id and event.sender == alice.user_id:
            received.append(event.body)
            if event.body in sent_at:
                latencies.append(time.monotonic() - sent_at[event.body])
            if len(received) >= MESSAGES:
                all_received.set()

    async def on_typing(room, event):
        if alice.user_id in event.users:
            typing_seen.set()

    bob.add_event_callback(on_message, RoomMessageText)
    bob.add_ephemeral_callback(on_typing, TypingNoticeEvent)
    await bob.sync(timeout=0)
    loop = asyncio.create_task(bob.sync_forever(timeout=30000))
    await asyncio.sleep(0.5)

    await alice.room_typing(room_id, typing_state=True, timeout=10000)
    await asyncio.wait_for(typing_seen.wait(), 10)
    for index in range(MESSAGES):
        body = f"line {index}"
        sent_at[body] = time.monotonic()
        check(await alice.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": body}), RoomSendResponse)
        await asyncio.sleep(0.02)
    await asyncio.wait_for(all_received.wait(), 20)
    loop.cancel()

    expected = [f"line {index}" for index in range(MESSAGES)]
    if received != expected:
        raise SystemExit(f"received {received!r}")
    latencies.sort()
    print(f"delivery p50 {latencies[len(latencies) // 2] * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms")
    await alice.close()
    await bob.close()
    print("OK")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
