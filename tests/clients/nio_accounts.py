"""Drives registration, login, profile, filters, devices and account data against a
tuwunel test server with matrix-nio, a real client library. Prints OK on success; any
failure raises (non-zero exit) with the response that went wrong.

Usage: nio_accounts.py <homeserver URL> <registration token>
"""

import asyncio
import json
import sys

from nio import (
    AsyncClient,
    DevicesResponse,
    LoginResponse,
    ProfileGetResponse,
    RegisterResponse,
    UploadFilterResponse,
    WhoamiResponse,
)


def check(response, kind):
    if not isinstance(response, kind):
        raise SystemExit(f"expected {kind.__name__}, got {response!r}")
    return response


async def main(homeserver: str, token: str) -> None:
    registering = AsyncClient(homeserver, "nioalice")
    check(await registering.register_with_token("nioalice", "correct horse", token, "nio phone"), RegisterResponse)
    await registering.close()

    client = AsyncClient(homeserver, "@nioalice:test.local")
    login = check(await client.login("correct horse", device_name="nio laptop"), LoginResponse)
    assert login.user_id == "@nioalice:test.local", login

    whoami = check(await client.whoami(), WhoamiResponse)
    assert whoami.user_id == "@nioalice:test.local", whoami
    assert whoami.device_id == login.device_id, whoami

    await client.set_displayname("Alice via nio")
    await client.set_avatar("mxc://test.local/avatar")
    profile = check(await client.get_profile(), ProfileGetResponse)
    assert profile.displayname == "Alice via nio", profile
    assert profile.avatar_url == "mxc://test.local/avatar", profile

    uploaded = check(await client.upload_filter(room={"timeline": {"limit": 5}}), UploadFilterResponse)
    assert uploaded.filter_id, uploaded

    devices = check(await client.devices(), DevicesResponse)
    names = sorted(device.display_name for device in devices.devices)
    assert names == ["nio laptop", "nio phone"], names

    path = f"/_matrix/client/v3/user/{client.user_id}/account_data/org.example.nio"
    headers = {"Authorization": f"Bearer {client.access_token}", "Content-Type": "application/json"}
    put = await client.send("PUT", path, json.dumps({"from": "nio"}), headers=headers)
    assert put.status == 200, await put.text()
    got = await client.send("GET", path, headers=headers)
    assert got.status == 200 and json.loads(await got.text()) == {"from": "nio"}, await got.text()

    await client.logout()
    await client.close()
    print("OK")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
