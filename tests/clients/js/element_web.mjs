// What Element Web does, step by step, through matrix-js-sdk (the engine of Element Web, with
// its Rust crypto), against one homeserver: ours or Synapse, the reference.
//
//   node element_web.mjs <homeserver base URL>
//
// Every step asserts what the client itself observes (its Room, RoomMember, MatrixEvent, User
// and Thread objects, its push rules, the answers of its API calls), not raw HTTP. Each step
// prints one line `STEP {"name": ..., "ok": ..., "ms": ..., "error": ...}`; the last line is
// `DONE <passed> passed, <failed> failed`. The Rust test in tests/integration/js_sdk.rs runs
// this against both servers and fails when a step passes on Synapse but not on ours.
//
// Steps run in order and later ones use what earlier ones made; a step that cannot run
// because one it needs failed fails too, naming what is missing.

import * as sdk from "matrix-js-sdk";
import { logger } from "matrix-js-sdk/lib/logger.js";

const baseUrl = process.argv[2];
if (!baseUrl) {
    process.stderr.write("usage: node element_web.mjs <homeserver base URL>\n");
    process.exit(2);
}

// The SDK and the Rust crypto log a lot; keep stdout for step lines only.
logger.setLevel("silent");
for (const method of ["debug", "info", "log", "warn", "error", "trace"]) {
    console[method] = () => {};
}
const out = (line) => process.stdout.write(line + "\n");
const unhandled = [];
process.on("unhandledRejection", (reason) => unhandled.push(String(reason?.stack ?? reason)));

/** Longest a single step may take; waits inside steps are shorter. */
const STEP_TIMEOUT_MS = 30000;
/** How long a step waits for the client to observe something. */
const WAIT_MS = 15000;

const results = [];
const state = {};

function fail(message) {
    throw new Error(message);
}

function need(...names) {
    for (const name of names) {
        if (state[name] === undefined) fail(`needs ${name} from an earlier step`);
    }
}

function assertEqual(actual, expected, what) {
    const a = JSON.stringify(actual);
    const e = JSON.stringify(expected);
    if (a !== e) fail(`${what}: expected ${e}, got ${a}`);
}

/** Waits until `check()` is truthy (polling every 25 ms), at most `ms`. */
async function waitFor(what, check, ms = WAIT_MS) {
    const deadline = Date.now() + ms;
    let last;
    for (;;) {
        try {
            last = await check();
            if (last) return last;
        } catch (error) {
            last = error;
        }
        if (Date.now() >= deadline) {
            fail(`timed out waiting for ${what}${last instanceof Error ? ` (${last.message})` : ""}`);
        }
        await new Promise((resolve) => setTimeout(resolve, 25));
    }
}

/** The Matrix error code of a failed request. */
async function errcodeOf(promise) {
    try {
        await promise;
    } catch (error) {
        return error.errcode ?? error.data?.errcode ?? `HTTP ${error.httpStatus}`;
    }
    return null;
}

async function step(name, body) {
    const started = Date.now();
    let timer;
    try {
        await Promise.race([
            body(),
            new Promise((_, reject) => {
                timer = setTimeout(() => reject(new Error("step timed out")), STEP_TIMEOUT_MS);
            }),
        ]);
        results.push({ name, ok: true });
        out("STEP " + JSON.stringify({ name, ok: true, ms: Date.now() - started }));
    } catch (error) {
        const message = String(error?.message ?? error).slice(0, 500);
        results.push({ name, ok: false });
        out("STEP " + JSON.stringify({ name, ok: false, ms: Date.now() - started, error: message }));
    } finally {
        clearTimeout(timer);
    }
}

// ---------------------------------------------------------------- accounts --

const suffix = Math.random().toString(36).slice(2, 8);
const password = (name) => `pw-${name}-${suffix}-secret`;

/** Registers the way Element does: a first request for the flows, then the dummy stage. */
async function register(name) {
    const anonymous = sdk.createClient({ baseUrl });
    const username = `${name}${suffix}`;
    let session;
    try {
        await anonymous.registerRequest({ username, password: password(name) });
        fail("registration without authentication succeeded");
    } catch (error) {
        if (error.httpStatus !== 401 || !error.data?.flows) throw error;
        session = error.data.session;
    }
    const response = await anonymous.registerRequest({
        username,
        password: password(name),
        initial_device_display_name: `${name}'s Element`,
        auth: { type: "m.login.dummy", session },
    });
    return { username, ...response };
}

function clientFor(credentials) {
    return sdk.createClient({
        baseUrl,
        accessToken: credentials.access_token,
        userId: credentials.user_id,
        deviceId: credentials.device_id,
        pendingEventOrdering: sdk.PendingEventOrdering.Detached,
        timelineSupport: true,
    });
}

async function startSyncing(client, { crypto = true } = {}) {
    if (crypto) await client.initRustCrypto({ useIndexedDB: false });
    const prepared = new Promise((resolve, reject) => {
        const onSync = (syncState, _previous, data) => {
            if (syncState === sdk.SyncState.Prepared || syncState === sdk.SyncState.Syncing) {
                client.off(sdk.ClientEvent.Sync, onSync);
                resolve();
            } else if (syncState === sdk.SyncState.Error) {
                client.off(sdk.ClientEvent.Sync, onSync);
                reject(new Error(`sync failed: ${data?.error?.message}`));
            }
        };
        client.on(sdk.ClientEvent.Sync, onSync);
    });
    await client.startClient({ initialSyncLimit: 20, threadSupport: true, lazyLoadMembers: true });
    await prepared;
}

function room(client, roomId) {
    return client.getRoom(roomId);
}

function findBody(roomObject, body) {
    return roomObject
        ?.getLiveTimeline()
        .getEvents()
        .find((event) => event.getContent()?.body === body);
}

async function waitForEvent(client, roomId, body, what = `"${body}"`) {
    return waitFor(`${client.getUserId()} to see ${what}`, () => findBody(room(client, roomId), body));
}

/** Sends a text message and returns its event id. */
async function send(client, roomId, body, extra = {}) {
    const { event_id } = await client.sendMessage(roomId, { msgtype: "m.text", body, ...extra });
    return event_id;
}

// -------------------------------------------------------------------- steps --

await step("register three accounts with the dummy stage", async () => {
    state.alice = await register("alice");
    state.bob = await register("bob");
    state.carol = await register("carol");
    state.dave = await register("dave");
    if (!state.alice.user_id.startsWith(`@alice${suffix}:`)) fail(`odd user id ${state.alice.user_id}`);
    state.domain = state.alice.user_id.split(":").slice(1).join(":");
});

await step("log in with a password on a second device", async () => {
    need("alice");
    const anonymous = sdk.createClient({ baseUrl });
    const flows = await anonymous.loginFlows();
    if (!flows.flows.some((flow) => flow.type === "m.login.password")) fail("no password login");
    const login = await anonymous.loginRequest({
        type: "m.login.password",
        identifier: { type: "m.id.user", user: state.alice.username },
        password: password("alice"),
        initial_device_display_name: "alice's second Element",
    });
    assertEqual(login.user_id, state.alice.user_id, "logged-in user");
    if (login.device_id === state.alice.device_id) fail("the second login reused the device");
    state.aliceSecond = login;
    const whoami = await clientFor(login).whoami();
    assertEqual(whoami.device_id, login.device_id, "whoami device");
});

await step("start clients with rust crypto and sync", async () => {
    need("alice", "bob", "carol", "dave");
    state.a = clientFor(state.alice);
    state.b = clientFor(state.bob);
    state.c = clientFor(state.carol);
    state.d = clientFor(state.dave);
    await Promise.all([startSyncing(state.a), startSyncing(state.b), startSyncing(state.c)]);
    await startSyncing(state.d, { crypto: false });
    const keys = await state.a.getCrypto().getOwnDeviceKeys();
    if (!keys.ed25519 || !keys.curve25519) fail("no device keys");
});

await step("create a room with an alias", async () => {
    need("a");
    const { room_id } = await state.a.createRoom({
        name: "Project",
        room_alias_name: `project${suffix}`,
        preset: sdk.Preset.PrivateChat,
    });
    state.roomId = room_id;
    state.alias = `#project${suffix}:${state.domain}`;
    const created = await waitFor("the room", () => room(state.a, room_id));
    await waitFor("the room name", () => created.name === "Project");
    await waitFor("the canonical alias", () => created.getCanonicalAlias() === state.alias);
    const resolved = await state.a.getRoomIdForAlias(state.alias);
    assertEqual(resolved.room_id, room_id, "alias resolution");
});

await step("rename the room", async () => {
    need("roomId");
    await state.a.setRoomName(state.roomId, "Project X");
    await waitFor("the new name", () => room(state.a, state.roomId).name === "Project X");
});

await step("set the topic and read it back", async () => {
    need("roomId");
    await state.a.setRoomTopic(state.roomId, "Planning things");
    await waitFor(
        "the topic",
        () =>
            room(state.a, state.roomId).currentState.getStateEvents("m.room.topic", "")?.getContent()
                .topic === "Planning things",
    );
    const topic = await state.a.getStateEvent(state.roomId, "m.room.topic", "");
    assertEqual(topic.topic, "Planning things", "getStateEvent topic");
});

await step("a missing state event is M_NOT_FOUND", async () => {
    need("roomId");
    assertEqual(
        await errcodeOf(state.a.getStateEvent(state.roomId, "m.room.avatar", "")),
        "M_NOT_FOUND",
        "errcode",
    );
});

await step("invite and join", async () => {
    need("roomId", "b");
    await state.a.invite(state.roomId, state.bob.user_id);
    await waitFor("bob's invite", () => room(state.b, state.roomId)?.getMyMembership() === "invite");
    await state.b.joinRoom(state.roomId);
    await waitFor(
        "alice to see bob join",
        () => room(state.a, state.roomId).getMember(state.bob.user_id)?.membership === "join",
    );
});

await step("change a power level", async () => {
    need("roomId", "bob");
    await state.a.setPowerLevel(state.roomId, state.bob.user_id, 50);
    await waitFor(
        "bob's power level",
        () => room(state.b, state.roomId).getMember(state.bob.user_id)?.powerLevel === 50,
    );
});

await step("change join rules", async () => {
    need("roomId");
    await state.a.sendStateEvent(state.roomId, "m.room.join_rules", { join_rule: "public" }, "");
    await waitFor("the join rule", () => room(state.b, state.roomId).getJoinRule() === "public");
});

await step("change history visibility", async () => {
    need("roomId");
    await state.a.sendStateEvent(
        state.roomId,
        "m.room.history_visibility",
        { history_visibility: "shared" },
        "",
    );
    await waitFor(
        "the visibility",
        () => room(state.b, state.roomId).getHistoryVisibility() === "shared",
    );
});

await step("change guest access", async () => {
    need("roomId");
    await state.a.sendStateEvent(state.roomId, "m.room.guest_access", { guest_access: "can_join" }, "");
    await waitFor("guest access", () => room(state.b, state.roomId).getGuestAccess() === "can_join");
});

await step("turn on encryption in an existing room", async () => {
    need("roomId");
    await state.a.sendStateEvent(
        state.roomId,
        "m.room.encryption",
        { algorithm: "m.megolm.v1.aes-sha2" },
        "",
    );
    await waitFor("encryption", () => state.b.getCrypto().isEncryptionEnabledInRoom(state.roomId));
    await waitFor("encryption", () => state.a.getCrypto().isEncryptionEnabledInRoom(state.roomId));
});

await step("an encrypted message two clients decrypt", async () => {
    need("roomId", "c");
    await state.a.invite(state.roomId, state.carol.user_id);
    await waitFor("carol's invite", () => room(state.c, state.roomId)?.getMyMembership() === "invite");
    await state.c.joinRoom(state.roomId);
    await waitFor(
        "alice to see carol join",
        () => room(state.a, state.roomId).getMember(state.carol.user_id)?.membership === "join",
    );
    const eventId = await send(state.a, state.roomId, "top secret plan");
    for (const reader of [state.b, state.c]) {
        const event = await waitFor(`${reader.getUserId()} to receive the event`, () =>
            room(reader, state.roomId).findEventById(eventId),
        );
        await waitFor(`${reader.getUserId()} to decrypt`, () => {
            if (event.isDecryptionFailure()) fail(`decryption failed: ${event.decryptionFailureReason}`);
            return event.getContent().body === "top secret plan";
        });
        if (!event.isEncrypted()) fail("the event was not encrypted");
    }
});

await step("a plain room for conversation", async () => {
    need("a", "bob", "carol");
    const { room_id } = await state.a.createRoom({
        name: "General",
        preset: sdk.Preset.PublicChat,
        invite: [state.bob.user_id],
    });
    state.general = room_id;
    await waitFor("bob's invite", () => room(state.b, room_id)?.getMyMembership() === "invite");
    await state.b.joinRoom(room_id);
    await state.c.joinRoom(room_id);
    await waitFor(
        "everyone joined",
        () =>
            room(state.a, room_id).getMember(state.bob.user_id)?.membership === "join" &&
            room(state.a, room_id).getMember(state.carol.user_id)?.membership === "join",
    );
});

await step("a message and a reply", async () => {
    need("general");
    state.firstMessage = await send(state.a, state.general, "Who wants lunch?");
    const reply = await send(state.b, state.general, "Me!", {
        "m.relates_to": { "m.in_reply_to": { event_id: state.firstMessage } },
    });
    const seen = await waitFor("alice to see the reply", () =>
        room(state.a, state.general).findEventById(reply),
    );
    assertEqual(seen.replyEventId, state.firstMessage, "replied-to event");
});

await step("an edit", async () => {
    need("firstMessage");
    await state.a.sendMessage(state.general, {
        msgtype: "m.text",
        body: "* Who wants pizza?",
        "m.new_content": { msgtype: "m.text", body: "Who wants pizza?" },
        "m.relates_to": { rel_type: "m.replace", event_id: state.firstMessage },
    });
    await waitFor("bob to see the edit", () => {
        const original = room(state.b, state.general).findEventById(state.firstMessage);
        return original?.replacingEvent() && original.getContent().body === "Who wants pizza?";
    });
});

await step("a reaction", async () => {
    need("firstMessage");
    await state.b.sendEvent(state.general, "m.reaction", {
        "m.relates_to": { rel_type: "m.annotation", event_id: state.firstMessage, key: "👍" },
    });
    await waitFor("alice to see the reaction", () => {
        const relations = room(state.a, state.general)
            .getUnfilteredTimelineSet()
            .relations.getChildEventsForEvent(state.firstMessage, "m.annotation", "m.reaction");
        return relations?.getRelations().some((event) => event.getRelation()?.key === "👍");
    });
});

await step("a thread", async () => {
    need("general");
    state.threadRoot = await send(state.a, state.general, "Thread about pizza toppings");
    await waitForEvent(state.b, state.general, "Thread about pizza toppings");
    const reply = await state.b.sendMessage(state.general, state.threadRoot, {
        msgtype: "m.text",
        body: "Pineapple, obviously",
        "m.relates_to": {
            rel_type: "m.thread",
            event_id: state.threadRoot,
            is_falling_back: true,
            "m.in_reply_to": { event_id: state.threadRoot },
        },
    });
    await waitFor("alice to see the thread reply", () => {
        const thread = room(state.a, state.general).getThread(state.threadRoot);
        return thread?.findEventById(reply.event_id);
    });
});

await step("thread replies from a syncing client settle (send answer before own sync)", async () => {
    need("threadRoot");
    // js-sdk throws "not a local echo" when its own sync brings a thread reply back before
    // the send request completes, and the send never settles: each must finish promptly.
    for (let index = 0; index < 10; index += 1) {
        const started = Date.now();
        await Promise.race([
            state.a.sendMessage(state.general, state.threadRoot, {
                msgtype: "m.text",
                body: `quick thread reply ${index}`,
                "m.relates_to": {
                    rel_type: "m.thread",
                    event_id: state.threadRoot,
                    is_falling_back: true,
                    "m.in_reply_to": { event_id: state.threadRoot },
                },
            }),
            new Promise((_, reject) =>
                setTimeout(() => reject(new Error(`thread reply ${index} did not settle in 5 s`)), 5000),
            ),
        ]);
        if (Date.now() - started > 5000) fail(`thread reply ${index} was slow`);
    }
    await waitFor("the replies in alice's thread", () =>
        room(state.a, state.general)
            .getThread(state.threadRoot)
            ?.events.some((event) => event.getContent().body === "quick thread reply 9"),
    );
});

await step("a redaction", async () => {
    need("general");
    const doomed = await send(state.b, state.general, "oops, wrong room");
    await waitFor("alice to see it", () => room(state.a, state.general).findEventById(doomed));
    await state.b.redactEvent(state.general, doomed);
    await waitFor("alice to see it redacted", () =>
        room(state.a, state.general).findEventById(doomed)?.isRedacted(),
    );
});

await step("typing notifications", async () => {
    need("general");
    await state.a.sendTyping(state.general, true, 10000);
    await waitFor("bob to see alice typing", () =>
        room(state.b, state.general).getMember(state.alice.user_id)?.typing,
    );
    await state.a.sendTyping(state.general, false, 0);
    await waitFor("bob to see alice stop", () =>
        !room(state.b, state.general).getMember(state.alice.user_id)?.typing,
    );
});

await step("read receipts", async () => {
    need("general");
    const eventId = await send(state.a, state.general, "please read this");
    const event = await waitFor("bob to receive it", () =>
        room(state.b, state.general).findEventById(eventId),
    );
    await state.b.sendReadReceipt(event, sdk.ReceiptType.Read, true);
    await waitFor("alice to see bob's receipt", () =>
        room(state.a, state.general).getEventReadUpTo(state.bob.user_id) === eventId,
    );
    state.readEvent = eventId;
});

await step("read markers", async () => {
    need("readEvent");
    await state.b.setRoomReadMarkers(state.general, state.readEvent);
    await waitFor("bob's fully-read marker", () =>
        room(state.b, state.general).getAccountData("m.fully_read")?.getContent().event_id ===
            state.readEvent,
    );
});

await step("pagination back to the start", async () => {
    need("a", "d");
    const { room_id } = await state.a.createRoom({ name: "History", preset: sdk.Preset.PublicChat });
    for (let index = 0; index < 30; index += 1) {
        await send(state.a, room_id, `history ${index}`);
    }
    await state.d.joinRoom(room_id);
    const history = await waitFor("dave's room", () => room(state.d, room_id));
    for (let page = 0; page < 20 && !findBody(history, "history 0"); page += 1) {
        await state.d.scrollback(history, 10);
    }
    if (!findBody(history, "history 0")) fail("the first message was never reached");
    const bodies = history
        .getLiveTimeline()
        .getEvents()
        .map((event) => event.getContent().body)
        .filter((body) => body?.startsWith("history "));
    assertEqual(bodies, [...Array(30).keys()].map((index) => `history ${index}`), "timeline order");
});

await step("profile: display name and avatar", async () => {
    need("general");
    await state.a.setDisplayName("Alice Liddell");
    const profile = await state.b.getProfileInfo(state.alice.user_id);
    assertEqual(profile.displayname, "Alice Liddell", "display name");
    await waitFor("bob to see alice's new name in the room", () =>
        room(state.b, state.general).getMember(state.alice.user_id)?.name === "Alice Liddell",
    );
});

await step("media: upload and authenticated download", async () => {
    need("a");
    const bytes = Buffer.from(`hello media ${suffix}`);
    const { content_uri } = await state.a.uploadContent(bytes, { name: "hello.txt", type: "text/plain" });
    if (!content_uri?.startsWith("mxc://")) fail(`bad content uri ${content_uri}`);
    const url = state.b.mxcUrlToHttp(content_uri, undefined, undefined, undefined, false, true, true);
    const response = await fetch(url, { headers: { Authorization: `Bearer ${state.bob.access_token}` } });
    assertEqual(response.status, 200, "download status");
    assertEqual(await response.text(), bytes.toString(), "downloaded bytes");
    const anonymous = await fetch(url);
    assertEqual(anonymous.status, 401, "download without a token");
    await state.a.setAvatarUrl(content_uri);
    const profile = await state.b.getProfileInfo(state.alice.user_id);
    assertEqual(profile.avatar_url, content_uri, "avatar url");
});

await step("media: thumbnail of an image", async () => {
    need("a");
    // A 2x2 red PNG.
    const png = Buffer.from(
        "iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAFklEQVR4nGP8z8DAwMDAxMDAwMDAAAANHQEDasKb6QAAAABJRU5ErkJggg==",
        "base64",
    );
    const { content_uri } = await state.a.uploadContent(png, { name: "red.png", type: "image/png" });
    const url = state.b.mxcUrlToHttp(content_uri, 32, 32, "scale", false, true, true);
    const response = await fetch(url, { headers: { Authorization: `Bearer ${state.bob.access_token}` } });
    assertEqual(response.status, 200, "thumbnail status");
    const type = response.headers.get("content-type") ?? "";
    if (!type.startsWith("image/")) fail(`thumbnail content type ${type}`);
    if ((await response.arrayBuffer()).byteLength === 0) fail("empty thumbnail");
});

await step("account data", async () => {
    need("a");
    await state.a.setAccountData("org.example.settings", { theme: "dark" });
    await waitFor("the account data", () =>
        state.a.getAccountData("org.example.settings")?.getContent().theme === "dark",
    );
});

await step("room tags", async () => {
    need("general");
    await state.a.setRoomTag(state.general, "m.favourite", { order: 0.5 });
    await waitFor("the tag", () => room(state.a, state.general).tags["m.favourite"]?.order === 0.5);
    await state.a.deleteRoomTag(state.general, "m.favourite");
    await waitFor("the tag's removal", () => !room(state.a, state.general).tags["m.favourite"]);
});

const ruleOf = (client, kind, id) =>
    client.pushRules?.global?.[kind]?.find((rule) => rule.rule_id === id);

await step("push rules: the legacy mention rules are there", async () => {
    need("b");
    const rules = await state.b.getPushRules();
    const overrides = rules.global.override.map((rule) => rule.rule_id);
    for (const id of [".m.rule.contains_display_name", ".m.rule.roomnotif", ".m.rule.is_user_mention"]) {
        if (!overrides.includes(id)) fail(`${id} missing from ${overrides}`);
    }
    if (!rules.global.content.some((rule) => rule.rule_id === ".m.rule.contains_user_name")) {
        fail("contains_user_name missing");
    }
    for (const kind of ["override", "content", "room", "sender", "underride"]) {
        if (!Array.isArray(rules.global[kind])) fail(`kind ${kind} is not a list`);
    }
});

await step("push rules: disable, enable and change actions of a default rule", async () => {
    need("b");
    await state.b.setPushRuleEnabled("global", "override", ".m.rule.contains_display_name", false);
    await waitFor("the rule disabled in the client", () =>
        ruleOf(state.b, "override", ".m.rule.contains_display_name")?.enabled === false,
    );
    await state.b.setPushRuleEnabled("global", "override", ".m.rule.contains_display_name", true);
    await waitFor("the rule enabled again", () =>
        ruleOf(state.b, "override", ".m.rule.contains_display_name")?.enabled === true,
    );
    const loud = ["notify", { set_tweak: "sound", value: "default" }, { set_tweak: "highlight" }];
    await state.b.setPushRuleActions("global", "override", ".m.rule.roomnotif", loud);
    const rules = await state.b.getPushRules();
    assertEqual(
        rules.global.override.find((rule) => rule.rule_id === ".m.rule.roomnotif").actions,
        loud,
        "roomnotif actions",
    );
});

await step("push rules: a new rule comes back as written", async () => {
    need("b", "general");
    const actions = ["notify", { set_tweak: "highlight", value: true }];
    await state.b.addPushRule("global", "room", state.general, { actions });
    const rules = await state.b.getPushRules();
    assertEqual(
        rules.global.room.find((rule) => rule.rule_id === state.general)?.actions,
        actions,
        "room rule actions",
    );
    await state.b.deletePushRule("global", "room", state.general);
});

await step("notifications: a display-name mention highlights", async () => {
    need("general");
    await state.b.setDisplayName("Bobby Tables");
    await waitFor("alice to see bob's name", () =>
        room(state.a, state.general).getMember(state.bob.user_id)?.name === "Bobby Tables",
    );
    const eventId = await send(state.a, state.general, "Bobby Tables, your table is ready");
    const event = await waitFor("bob to receive the mention", () =>
        room(state.b, state.general).findEventById(eventId),
    );
    const actions = state.b.getPushActionsForEvent(event, true);
    if (!actions?.notify || !actions.tweaks?.highlight) {
        fail(`client-side actions ${JSON.stringify(actions)}`);
    }
    await waitFor("the server's highlight count", () =>
        room(state.b, state.general).getUnreadNotificationCount(sdk.NotificationCountType.Highlight) > 0,
    );
});

await step("device management with user-interactive auth", async () => {
    need("aliceSecond");
    const { devices } = await state.a.getDevices();
    const ids = devices.map((device) => device.device_id);
    for (const id of [state.alice.device_id, state.aliceSecond.device_id]) {
        if (!ids.includes(id)) fail(`device ${id} not listed`);
    }
    await state.a.setDeviceDetails(state.aliceSecond.device_id, { display_name: "Old laptop" });
    const renamed = (await state.a.getDevice(state.aliceSecond.device_id)).display_name;
    assertEqual(renamed, "Old laptop", "device name");
    let session;
    try {
        await state.a.deleteDevice(state.aliceSecond.device_id);
        fail("deleting a device needed no authentication");
    } catch (error) {
        if (error.httpStatus !== 401) throw error;
        session = error.data.session;
    }
    await state.a.deleteDevice(state.aliceSecond.device_id, {
        type: "m.login.password",
        identifier: { type: "m.id.user", user: state.alice.user_id },
        password: password("alice"),
        session,
    });
    const after = (await state.a.getDevices()).devices.map((device) => device.device_id);
    if (after.includes(state.aliceSecond.device_id)) fail("the device is still listed");
});

await step("search", async () => {
    need("general");
    const hit = await send(state.a, state.general, "the quarterly flamingo report");
    await waitForEvent(state.b, state.general, "the quarterly flamingo report");
    const found = await state.b.searchRoomEvents({ term: "flamingo" });
    if (!found.results.some((result) => result.context.getEvent().getId() === hit)) {
        fail(`not found among ${found.results.length} results`);
    }
    const none = await state.b.searchRoomEvents({ term: "xylophonist" });
    assertEqual(none.results.length, 0, "results for a missing word");
});

await step("spaces and their hierarchy", async () => {
    need("general");
    const { room_id: space } = await state.a.createRoom({
        name: "Company",
        preset: sdk.Preset.PublicChat,
        creation_content: { type: "m.space" },
    });
    await state.a.sendStateEvent(space, "m.space.child", { via: [state.domain] }, state.general);
    await waitFor("the space room", () => room(state.a, space)?.isSpaceRoom());
    const hierarchy = await state.b.getRoomHierarchy(space);
    const ids = hierarchy.rooms.map((entry) => entry.room_id);
    if (!ids.includes(space) || !ids.includes(state.general)) fail(`hierarchy ${ids}`);
});

await step("the room directory", async () => {
    need("general");
    await state.a.setRoomDirectoryVisibility(state.general, sdk.Visibility.Public);
    const { visibility } = await state.a.getRoomDirectoryVisibility(state.general);
    assertEqual(visibility, "public", "directory visibility");
    const listed = await state.d.publicRooms({ filter: { generic_search_term: "General" } });
    if (!listed.chunk.some((entry) => entry.room_id === state.general)) fail("not listed");
    assertEqual(await state.d.getThirdpartyProtocols(), {}, "third-party protocols");
});

await step("presence", async () => {
    need("b");
    await state.a.setPresence({ presence: "online", status_msg: "Working from home" });
    await waitFor("bob to see alice's status", () =>
        state.b.getUser(state.alice.user_id)?.presenceStatusMsg === "Working from home",
    );
});

await step("to-device messages", async () => {
    need("b");
    const received = new Promise((resolve) => {
        const onEvent = (event) => {
            if (event.getType() === "org.example.ping") {
                state.b.off(sdk.ClientEvent.ToDeviceEvent, onEvent);
                resolve(event);
            }
        };
        state.b.on(sdk.ClientEvent.ToDeviceEvent, onEvent);
    });
    await state.a.sendToDevice(
        "org.example.ping",
        new Map([[state.bob.user_id, new Map([[state.bob.device_id, { n: 42 }]])]]),
    );
    const event = await Promise.race([
        received,
        new Promise((_, reject) => setTimeout(() => reject(new Error("no to-device event")), WAIT_MS)),
    ]);
    assertEqual(event.getContent().n, 42, "content");
    assertEqual(event.getSender(), state.alice.user_id, "sender");
});

await step("kick, ban, unban and leave", async () => {
    need("general");
    await state.a.kick(state.general, state.carol.user_id, "Too loud");
    await waitFor("carol to see the kick", () => room(state.c, state.general)?.getMyMembership() === "leave");
    await state.c.joinRoom(state.general);
    await waitFor("carol back", () =>
        room(state.a, state.general).getMember(state.carol.user_id)?.membership === "join",
    );
    await state.a.ban(state.general, state.carol.user_id, "Still too loud");
    await waitFor("carol to see the ban", () => room(state.c, state.general)?.getMyMembership() === "ban");
    if (!(await errcodeOf(state.c.joinRoom(state.general)))) fail("carol joined while banned");
    await state.a.unban(state.general, state.carol.user_id);
    await waitFor("alice to see the unban", () =>
        room(state.a, state.general).getMember(state.carol.user_id)?.membership === "leave",
    );
    await state.b.leave(state.general);
    await waitFor("alice to see bob leave", () =>
        room(state.a, state.general).getMember(state.bob.user_id)?.membership === "leave",
    );
});

await step("forgetting a room ends access to its history", async () => {
    need("general");
    await state.c.forget(state.general);
    assertEqual(
        await errcodeOf(state.c.createMessagesRequest(state.general, null, 10, sdk.Direction.Backward)),
        "M_FORBIDDEN",
        "messages after forgetting",
    );
});

await step("peeking into a world-readable room", async () => {
    need("a", "d");
    const { room_id } = await state.a.createRoom({
        name: "Announcements",
        preset: sdk.Preset.PublicChat,
        initial_state: [
            { type: "m.room.history_visibility", state_key: "", content: { history_visibility: "world_readable" } },
        ],
    });
    await send(state.a, room_id, "Welcome, visitors");
    const peeked = await state.d.peekInRoom(room_id);
    await waitFor("the peeked history", () => findBody(peeked, "Welcome, visitors"));
    await send(state.a, room_id, "News while you look");
    await waitFor("a live event while peeking", () => findBody(peeked, "News while you look"));
    state.d.stopPeeking();
    // A room that is not world-readable cannot be peeked.
    assertEqual(
        await errcodeOf(state.d.roomInitialSync(state.roomId, 10)),
        "M_FORBIDDEN",
        "peeking a private room",
    );
});

await step("no TURN server configured", async () => {
    need("a");
    assertEqual(await state.a.turnServer(), {}, "turnServer answer");
    assertEqual(state.a.getTurnServers(), [], "the client's TURN servers");
});

await step("log out", async () => {
    need("d");
    state.d.stopClient();
    await state.d.logout(true);
    assertEqual(await errcodeOf(state.d.whoami()), "M_UNKNOWN_TOKEN", "the old token");
});

for (const client of [state.a, state.b, state.c, state.d]) {
    try {
        client?.stopClient();
    } catch {
        // stopping is best effort
    }
}
const passed = results.filter((result) => result.ok).length;
out(`DONE passed=${passed} failed=${results.length - passed}`);
process.exit(0);
