// An "Element-like" Matrix client for the integration tests: matrix-js-sdk with its Rust crypto
// (@matrix-org/matrix-sdk-crypto-wasm), configured the way Element Web runs it, in one process.
//
// Protocol (driven by tests/harness/element.py): one JSON object per line on stdin,
//   {"id": 1, "op": "login", ...arguments}
// and one JSON object per line on stdout for each request,
//   {"id": 1, "result": ...}   or   {"id": 1, "error": "what went wrong"}.
// Requests run concurrently; answers carry the request id. Everything else (js-sdk and Rust
// crypto logs, our own diagnostics) goes to stderr, which the Python side keeps in a log file.

import { createInterface } from "node:readline";

// js-sdk and the Rust crypto's tracing log through console.* (looked up at call time), and
// console.log/info/debug write to stdout, which is reserved for protocol answers. Route the
// whole console to stderr before anything can log.
const protocolOut = process.stdout;
for (const method of ["log", "info", "debug", "trace", "warn"]) {
    console[method] = (...args) => console.error(...args);
}

// Imported after the console is redirected (dynamic imports run in order, static ones would be
// hoisted above the redirection). In Node, the "node" export condition of
// @matrix-org/matrix-sdk-crypto-wasm loads the .wasm file from disk, so no bundler is needed.
const sdk = await import("matrix-js-sdk");
const cryptoApi = await import("matrix-js-sdk/lib/crypto-api/index.js");
const { logger } = await import("matrix-js-sdk/lib/logger.js");
const { decodeRecoveryKey } = await import("matrix-js-sdk/lib/crypto-api/recovery-key.js");
// The poll event types as js-sdk (and so Element) names them: UnstableValues, whose .name is the
// unstable "org.matrix.msc3381.*" name Element sends, and whose .matches() accepts both names.
const { M_POLL_START, M_POLL_RESPONSE, M_POLL_END } = await import("matrix-js-sdk/lib/@types/polls.js");
logger.setLevel(process.env.ELEMENT_LOG_LEVEL ?? "info");

const {
    ClientEvent,
    EventType,
    KnownMembership,
    MatrixEventEvent,
    MsgType,
    Preset,
    RelationType,
    RoomEvent,
    createClient,
} = sdk;
const {
    AllDevicesIsolationMode,
    DecryptionFailureCode,
    EventShieldColour,
    EventShieldReason,
    OnlySignedDevicesIsolationMode,
} = cryptoApi;

const MEGOLM = "m.megolm.v1.aes-sha2";
const POLL_MS = 50;

// Decryption failures that will not turn into a success while we wait:
// - the trust failures: js-sdk drops such an event from its "waiting for a room key" list
//   (RustCrypto.onMegolmDecryptionError) because the key is there but the sender's device is
//   not trusted enough, so it never retries them;
// - a withheld key: the sender told us (m.room_key.withheld) it will not send us this key,
//   e.g. because it only shares with cross-signed devices and ours is not.
// Every other failure (a missing key, mostly) may still heal when the key arrives.
const FINAL_FAILURES = new Set([
    DecryptionFailureCode.UNSIGNED_SENDER_DEVICE,
    DecryptionFailureCode.UNKNOWN_SENDER_DEVICE,
    DecryptionFailureCode.SENDER_IDENTITY_PREVIOUSLY_VERIFIED,
    DecryptionFailureCode.MEGOLM_KEY_WITHHELD,
    DecryptionFailureCode.MEGOLM_KEY_WITHHELD_FOR_UNVERIFIED_DEVICE,
]);
// A renamed export would otherwise make every failure look transient, silently.
if ([...FINAL_FAILURES].some((code) => typeof code !== "string")) {
    throw new Error("matrix-js-sdk no longer exports the expected DecryptionFailureCode values");
}

let client = null;
let userId = null;
// The Secret Storage key, once a test gives this client a recovery key (as a person types it
// into Element's "Verify with recovery key"); js-sdk asks for it through this callback.
let secretStorageKey = null;
// Only events from the live timeline after the first sync count: older ones are history.
let live = false;
// Per room: live messages from other users, in arrival order, each handed out once.
const inbox = new Map();
// Per room: live reactions, polls and poll ends from other users, and every encrypted event
// (which may turn out to be one of those once decrypted), in arrival order. Kept, not consumed:
// reactions_on and poll_ended look through them; next_poll hands out each poll once.
const related = new Map();
const RELATED_TYPES = new Set([
    EventType.Reaction,
    ...[M_POLL_START, M_POLL_END].flatMap((type) => [type.name, type.altName]),
]);
const pollsTaken = new Set();
// Invitations already returned by wait_for_invite, so two waits return two different rooms.
const invitesSeen = new Set();

function note(...args) {
    console.error(`[element-client ${userId ?? "?"}]`, ...args);
}

function sleep(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
}

// Polling is the simplest reliable way to wait on js-sdk's in-memory state: its change events
// are spread over many emitters (room, member, client) and easy to miss by subscribing late.
async function waitUntil(predicate, timeoutMs, describe) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
        const value = predicate();
        if (value) return value;
        if (Date.now() >= deadline) throw new Error(`${describe()} (after ${timeoutMs} ms)`);
        await sleep(POLL_MS);
    }
}

function requireClient() {
    if (!client) throw new Error("not logged in: send a login request first");
    return client;
}

function roomSummary(roomId) {
    const room = client?.getRoom(roomId);
    if (!room) return `${userId} does not know room ${roomId}`;
    const members = room
        .getMembers()
        .map((m) => `${m.userId}:${m.membership}`)
        .sort();
    const recent = room
        .getLiveTimeline()
        .getEvents()
        .slice(-8)
        .map((e) => {
            const what = e.isDecryptionFailure()
                ? `<undecryptable: ${e.decryptionFailureReason}>`
                : e.getType() === EventType.RoomMessage
                  ? JSON.stringify(e.getContent().body)
                  : e.getType();
            return `${e.getSender()}: ${what}`;
        });
    return `my membership=${room.getMyMembership()}; members=[${members.join(", ")}]; recent=[${recent.join(" | ")}]`;
}

// ---------------------------------------------------------------------------- login

async function login({ homeserver, user_id, password, device_name, isolation = "only_signed", cross_sign = true }) {
    if (client) throw new Error(`already logged in as ${userId}`);
    const identifier = { type: "m.id.user", user: user_id };
    const anonymous = createClient({ baseUrl: homeserver });
    const credentials = await anonymous.loginRequest({
        type: "m.login.password",
        identifier,
        password,
        initial_device_display_name: device_name ?? "element-like test client",
    });
    userId = credentials.user_id;

    client = createClient({
        baseUrl: homeserver,
        userId: credentials.user_id,
        deviceId: credentials.device_id,
        accessToken: credentials.access_token,
        cryptoCallbacks: {
            getSecretStorageKey: async ({ keys }) => {
                if (!secretStorageKey) throw new Error("no recovery key was given to this client");
                return [Object.keys(keys)[0], secretStorageKey];
            },
        },
    });
    // In-memory crypto store: Node has no IndexedDB, and each test device lives for one process.
    await client.initRustCrypto({ useIndexedDB: false });
    const crypto = client.getCrypto();
    // Element's "exclude insecure devices" labs flag (the 2026 default) selects
    // OnlySignedDevicesIsolationMode; without it Element uses AllDevicesIsolationMode(true).
    if (isolation === "only_signed") crypto.setDeviceIsolationMode(new OnlySignedDevicesIsolationMode());
    else if (isolation === "all") crypto.setDeviceIsolationMode(new AllDevicesIsolationMode(true));
    else throw new Error(`isolation must be "only_signed" or "all", not ${JSON.stringify(isolation)}`);

    client.on(RoomEvent.Timeline, onTimeline);
    client.on(ClientEvent.Sync, (state, _previous, data) => {
        if (state === "ERROR") note("sync error:", data?.error?.message ?? data);
    });
    const prepared = new Promise((resolve, reject) => {
        const onSync = (state, _previous, data) => {
            if (state === "PREPARED" || state === "SYNCING") {
                client.off(ClientEvent.Sync, onSync);
                resolve();
            } else if (state === "ERROR") {
                client.off(ClientEvent.Sync, onSync);
                reject(new Error(`first sync failed: ${data?.error?.message ?? state}`));
            }
        };
        client.on(ClientEvent.Sync, onSync);
    });
    // lazyLoadMembers as in Element: the room encryptor then loads the member list itself
    // before sharing a room key.
    await client.startClient({ initialSyncLimit: 20, lazyLoadMembers: true });
    await prepared;
    live = true;

    if (cross_sign) await crossSign(identifier, password);
    return {
        user_id: credentials.user_id,
        device_id: credentials.device_id,
        cross_signed: cross_sign,
    };
}

// Element sets up cross-signing right after the first login (with secret storage too, which a
// test device does not need). The upload of the signing keys is protected by user-interactive
// auth; Element asks for the password, we pass it directly.
// A later device of the same user would be verified by an earlier one (or a recovery key) in
// Element; a test device has neither, so it resets the identity, as Element's "reset
// cross-signing" does: the user's earlier devices are then no longer signed.
async function crossSign(identifier, password) {
    const crypto = client.getCrypto();
    if (await crypto.userHasCrossSigningKeys(userId, true)) {
        note("the user already has a cross-signing identity; replacing it");
    }
    await crypto.bootstrapCrossSigning({
        setupNewCrossSigning: true,
        authUploadDeviceSigningKeys: async (makeRequest) => {
            await makeRequest({ type: "m.login.password", identifier, password });
        },
    });
    await waitUntilSignedOnServer();
}

// bootstrapCrossSigning only reports local success; wait until the server holds a signature
// of this device by its owner's self-signing key, which is what other users' clients will see.
async function waitUntilSignedOnServer() {
    const deviceId = client.getDeviceId();
    const deadline = Date.now() + 10_000;
    for (;;) {
        const keys = await client.downloadKeysForUsers([userId]);
        const device = keys.device_keys?.[userId]?.[deviceId];
        const selfSigning = Object.keys(keys.self_signing_keys?.[userId]?.keys ?? {});
        const signatures = Object.keys(device?.signatures?.[userId] ?? {});
        if (selfSigning.some((key) => signatures.includes(key))) return;
        if (Date.now() > deadline) {
            throw new Error(
                `cross-signing finished but the server has no self-signing signature ` +
                    `on device ${deviceId} (signatures: ${signatures.join(", ") || "none"})`,
            );
        }
        await sleep(200);
    }
}

// ---------------------------------------------------------------------------- rooms

// A DM the way Element's createRoom() makes one for "Start chat": trusted_private_chat preset,
// is_direct, encryption in the initial state, then the m.direct account data updated.
async function createDm({ user_id, encrypted = true, timeout_ms = 15_000 }) {
    const c = requireClient();
    const initial_state = encrypted
        ? [{ type: EventType.RoomEncryption, state_key: "", content: { algorithm: MEGOLM } }]
        : [];
    const { room_id } = await c.createRoom({
        preset: Preset.TrustedPrivateChat,
        is_direct: true,
        invite: [user_id],
        initial_state,
    });
    const direct = { ...(c.getAccountData(EventType.Direct)?.getContent() ?? {}) };
    direct[user_id] = [...(direct[user_id] ?? []).filter((id) => id !== room_id), room_id];
    await c.setAccountData(EventType.Direct, direct);
    await waitForRoom(room_id, encrypted, timeout_ms);
    return room_id;
}

async function createRoom({ name, invite = [], encrypted = true, timeout_ms = 15_000 }) {
    const c = requireClient();
    const initial_state = encrypted
        ? [{ type: EventType.RoomEncryption, state_key: "", content: { algorithm: MEGOLM } }]
        : [];
    const options = { preset: Preset.PrivateChat, invite, initial_state };
    if (name) options.name = name; // Synapse rejects "name": null
    const { room_id } = await c.createRoom(options);
    await waitForRoom(room_id, encrypted, timeout_ms);
    return room_id;
}

// The room is usable once our own sync shows us joined and, for an encrypted room, the crypto
// layer knows it is encrypted (otherwise the first message would go out in the clear).
async function waitForRoom(roomId, encrypted, timeoutMs) {
    await waitUntil(
        () => client.getRoom(roomId)?.getMyMembership() === KnownMembership.Join,
        timeoutMs,
        () => `created ${roomId} but sync never showed us joined: ${roomSummary(roomId)}`,
    );
    if (encrypted) {
        const deadline = Date.now() + timeoutMs;
        while (!(await client.getCrypto().isEncryptionEnabledInRoom(roomId))) {
            if (Date.now() > deadline) throw new Error(`${roomId} never became encrypted: ${roomSummary(roomId)}`);
            await sleep(POLL_MS);
        }
    }
}

async function join({ room_id, timeout_ms = 15_000 }) {
    await requireClient().joinRoom(room_id);
    await waitUntil(
        () => client.getRoom(room_id)?.getMyMembership() === KnownMembership.Join,
        timeout_ms,
        () => `joined ${room_id} but sync never showed it: ${roomSummary(room_id)}`,
    );
    return room_id;
}

async function waitForJoin({ room_id, user_id, timeout_ms = 15_000 }) {
    requireClient();
    await waitUntil(
        () => client.getRoom(room_id)?.getMember(user_id)?.membership === KnownMembership.Join,
        timeout_ms,
        () => `${user_id} did not join ${room_id}: ${roomSummary(room_id)}`,
    );
    return null;
}

async function waitForInvite({ inviter = null, timeout_ms = 15_000 }) {
    const c = requireClient();
    const pending = () =>
        c.getRooms().find((room) => {
            if (room.getMyMembership() !== KnownMembership.Invite || invitesSeen.has(room.roomId)) return false;
            // Our own m.room.member event in the invite state is the invitation; its sender invited us.
            return !inviter || room.getMember(userId)?.events.member?.getSender() === inviter;
        });
    const room = await waitUntil(pending, timeout_ms, () => `no invitation${inviter ? ` from ${inviter}` : ""}`);
    invitesSeen.add(room.roomId);
    return room.roomId;
}

// ---------------------------------------------------------------------------- messages

async function sendText({ room_id, body }) {
    const c = requireClient();
    if (c.getRoom(room_id)?.getMyMembership() !== KnownMembership.Join) {
        throw new Error(`cannot send to ${room_id}: not joined (${roomSummary(room_id)})`);
    }
    const { event_id } = await c.sendMessage(room_id, { msgtype: MsgType.Text, body });
    return event_id;
}

function onTimeline(event, room, toStartOfTimeline, removed, data) {
    if (!live || toStartOfTimeline || removed || !data?.liveEvent || !room) return;
    if (event.getSender() === userId) return;
    // getWireType: an encrypted event may not be decrypted yet, so its type is still unknown.
    const wire = event.getWireType();
    if (wire === EventType.RoomMessageEncrypted || RELATED_TYPES.has(wire)) {
        if (!related.has(room.roomId)) related.set(room.roomId, []);
        related.get(room.roomId).push(event);
    }
    if (wire !== EventType.RoomMessageEncrypted && wire !== EventType.RoomMessage) return;
    if (!inbox.has(room.roomId)) inbox.set(room.roomId, []);
    inbox.get(room.roomId).push(event);
}

// Wait until the event's decryption has reached a state that will not change by itself:
// decrypted, or failed with a code js-sdk never retries. A missing room key is usually just
// late (to-device messages travel on a different sync than the room event), so on such a
// failure keep waiting for js-sdk to retry when the key arrives, until the deadline.
async function settle(event, deadline) {
    for (;;) {
        if (!event.isEncrypted()) return;
        const decrypted = new Promise((resolve) => event.once(MatrixEventEvent.Decrypted, resolve));
        const pending = event.isBeingDecrypted() || event.shouldAttemptDecryption();
        if (!pending && !event.isDecryptionFailure()) return;
        if (!pending && FINAL_FAILURES.has(event.decryptionFailureReason)) return;
        const remaining = deadline - Date.now();
        if (remaining <= 0) return;
        let timer;
        const timedOut = await Promise.race([
            decrypted.then(() => false),
            new Promise((resolve) => {
                timer = setTimeout(() => resolve(true), remaining);
            }),
        ]);
        clearTimeout(timer);
        if (timedOut) return;
    }
}

const colourName = (value) => EventShieldColour[value] ?? String(value);
const reasonName = (value) => (value === null || value === undefined ? null : (EventShieldReason[value] ?? String(value)));

// What Element would draw next to the event: js-sdk's encryption info for a decrypted event;
// Element's own "not encrypted" warning for a plaintext event in an encrypted room; no shield
// (null) for an event it could not decrypt, which Element shows as "Unable to decrypt" instead.
async function shieldOf(event) {
    if (event.isDecryptionFailure()) return null;
    if (!event.isEncrypted()) {
        const roomEncrypted = await client.getCrypto().isEncryptionEnabledInRoom(event.getRoomId());
        return roomEncrypted ? { colour: "RED", reason: "SENT_IN_CLEAR" } : { colour: "NONE", reason: null };
    }
    const info = await client.getCrypto().getEncryptionInfoForEvent(event);
    if (!info) return null;
    return { colour: colourName(info.shieldColour), reason: reasonName(info.shieldReason) };
}

async function describeMessage(event) {
    const failure = event.isDecryptionFailure() ? event.decryptionFailureReason : null;
    const content = failure ? {} : event.getContent();
    return {
        room_id: event.getRoomId(),
        event_id: event.getId(),
        sender: event.getSender(),
        body: typeof content.body === "string" ? content.body : "",
        msgtype: typeof content.msgtype === "string" ? content.msgtype : "",
        content,
        encrypted: event.isEncrypted(),
        decryption_failure: failure,
        decryption_error: failure ? (event.getContent().body ?? null) : null,
        shield: await shieldOf(event),
    };
}

async function nextMessage({ room_id, timeout_ms = 30_000, allow_timeout = false }) {
    requireClient();
    const deadline = Date.now() + timeout_ms;
    for (;;) {
        const queue = inbox.get(room_id) ?? [];
        if (queue.length === 0) {
            if (Date.now() >= deadline) {
                if (allow_timeout) return null;
                throw new Error(`no message from another user in ${room_id} within ${timeout_ms} ms: ${roomSummary(room_id)}`);
            }
            await sleep(POLL_MS);
            continue;
        }
        const event = queue.shift();
        await settle(event, deadline);
        // An encrypted event that turned out to be something else (say a reaction) is not a message.
        if (!event.isDecryptionFailure() && event.getType() !== EventType.RoomMessage) continue;
        return await describeMessage(event);
    }
}

// ---------------------------------------------------------------------------- reactions and polls

// An event whose decryption is over: plaintext, or decrypted. Still pending or failed: not yet
// (js-sdk retries a failure when the missing key arrives; the waits below poll again).
function readable(event) {
    if (!event.isEncrypted()) return true;
    if (event.isBeingDecrypted() || event.shouldAttemptDecryption()) return false;
    return !event.isDecryptionFailure();
}

// Related events from others in the room, readable and not redacted, whose type `isType` takes.
function relatedOf(roomId, isType) {
    return (related.get(roomId) ?? []).filter(
        (event) => readable(event) && !event.isRedacted() && isType(event.getType()),
    );
}

// Element's reaction button: an m.reaction annotating the event. js-sdk sends reactions in the
// clear even in an encrypted room (shouldEncryptEventForRoom), as Element does.
async function sendReaction({ room_id, event_id, key }) {
    const c = requireClient();
    const { event_id: sent } = await c.sendEvent(room_id, EventType.Reaction, {
        "m.relates_to": { rel_type: RelationType.Annotation, event_id, key },
    });
    return sent;
}

// The keys of the reactions `sender` put on `event_id`, in arrival order, once at least
// `at_least` are there or the time is up (then whatever there is, maybe none). The relation is
// read as Element reads it (MatrixEvent.getRelation: the m.relates_to of the event as sent, which
// an encrypted event must carry in the clear for Element to show it under the message).
async function reactionsOn({ room_id, event_id, sender, at_least = 1, timeout_ms = 15_000 }) {
    requireClient();
    const keys = () =>
        relatedOf(room_id, (type) => type === EventType.Reaction)
            .filter((event) => event.getSender() === sender)
            .map((event) => event.getRelation())
            .filter(
                (rel) =>
                    rel?.rel_type === RelationType.Annotation &&
                    rel.event_id === event_id &&
                    typeof rel.key === "string",
            )
            .map((rel) => rel.key);
    const deadline = Date.now() + timeout_ms;
    while (keys().length < at_least && Date.now() < deadline) await sleep(POLL_MS);
    return keys();
}

// A poll start as Element reads it: MPollBody renders event.unstableExtensibleEvent when it
// parses as a poll start (matrix-events-sdk's PollStartEvent); `renders` says whether it does.
async function describePoll(event) {
    let poll = null;
    try {
        const parsed = event.unstableExtensibleEvent;
        if (parsed?.isEquivalentTo?.(M_POLL_START)) poll = parsed;
    } catch (error) {
        note(`poll ${event.getId()} does not parse as Element parses it:`, error?.message ?? error);
    }
    return {
        room_id: event.getRoomId(),
        event_id: event.getId(),
        sender: event.getSender(),
        type: event.getType(),
        content: event.getContent(),
        renders: poll !== null,
        question: poll?.question?.text ?? null,
        answers: (poll?.answers ?? []).map((answer) => ({ id: answer.id, text: answer.text ?? null })),
        kind: poll?.rawKind ?? null,
        max_selections: poll?.maxSelections ?? null,
        encrypted: event.isEncrypted(),
        shield: await shieldOf(event),
        // js-sdk made its Poll model of it (what Element's poll tile reads votes and the end from).
        poll_model: Boolean(client.getRoom(event.getRoomId())?.polls?.has(event.getId())),
    };
}

// The next poll start from another user in the room, each handed out once.
async function nextPoll({ room_id, timeout_ms = 30_000 }) {
    requireClient();
    const event = await waitUntil(
        () => relatedOf(room_id, (type) => M_POLL_START.matches(type)).find((e) => !pollsTaken.has(e.getId())),
        timeout_ms,
        () => `no poll from another user in ${room_id}: ${roomSummary(room_id)}`,
    );
    pollsTaken.add(event.getId());
    // The Poll model is made right after decryption; give js-sdk a moment to catch up.
    const room = client.getRoom(room_id);
    const until = Date.now() + 2_000;
    while (!room?.polls?.has(event.getId()) && Date.now() < until) await sleep(POLL_MS);
    return await describePoll(event);
}

// Tapping an answer in Element's poll tile: MPollBody sends
// PollResponseEvent.from([answerId], pollId).serialize() (matrix-events-sdk), i.e. the unstable
// names (an UnstableValue's .name) and an m.reference to the poll. Encrypted in an encrypted room.
async function sendPollResponse({ room_id, poll_event_id, answer_id }) {
    const c = requireClient();
    const content = {
        "m.relates_to": { rel_type: RelationType.Reference, event_id: poll_event_id },
        [M_POLL_RESPONSE.name]: { answers: [answer_id] },
    };
    const { event_id } = await c.sendEvent(room_id, M_POLL_RESPONSE.name, content);
    return event_id;
}

// Whether an end event from another user for the poll arrived (relation read as Element reads
// it), waiting until it does or the time is up.
async function pollEnded({ room_id, poll_event_id, timeout_ms = 15_000 }) {
    requireClient();
    const ended = () =>
        relatedOf(room_id, (type) => M_POLL_END.matches(type)).some((event) => {
            const rel = event.getRelation();
            return rel?.rel_type === RelationType.Reference && rel.event_id === poll_event_id;
        });
    const deadline = Date.now() + timeout_ms;
    while (!ended() && Date.now() < deadline) await sleep(POLL_MS);
    if (!ended()) return false;
    // Element's poll tile shows "Ended" from js-sdk's Poll model, which checks the end's sender.
    const model = client.getRoom(room_id)?.polls?.get(poll_event_id);
    if (model && !model.isEnded) {
        const until = Date.now() + 2_000;
        while (!model.isEnded && Date.now() < until) await sleep(POLL_MS);
        if (!model.isEnded) note(`an end event for ${poll_event_id} arrived but js-sdk's Poll model is not ended`);
    }
    return true;
}

// How this client sees another user's devices: what decides key sharing and shields.
// The trust fields are null for a user the crypto layer does not track (one we share no
// encrypted room with): js-sdk then lists the devices from a one-off /keys/query but has no
// verification status for them.
async function userDevices({ user_id }) {
    const crypto = requireClient().getCrypto();
    const devices = (await crypto.getUserDeviceInfo([user_id], true)).get(user_id) ?? new Map();
    const result = [];
    for (const deviceId of devices.keys()) {
        const status = await crypto.getDeviceVerificationStatus(user_id, deviceId);
        result.push({
            device_id: deviceId,
            signed_by_owner: status ? status.signedByOwner : null,
            cross_signing_verified: status ? status.crossSigningVerified : null,
        });
    }
    const identity = await crypto.getUserVerificationStatus(user_id);
    return {
        has_cross_signing: await crypto.userHasCrossSigningKeys(user_id, true),
        identity_verified: identity.isVerified(),
        // Element's "identity was reset" warning: the user's master key is not the one pinned.
        needs_user_approval: identity.needsUserApproval,
        devices: result,
    };
}

// Element's "Verify with recovery key" on a new session: the cross-signing keys are read from
// Secret Storage (checking the key against its description, decrypting each secret), then
// this device is signed with them. Exercises the bot's recovery key and Secret Storage format.
async function verifyWithRecoveryKey({ recovery_key }) {
    const crypto = requireClient().getCrypto();
    secretStorageKey = decodeRecoveryKey(recovery_key);
    // Element has synced its own identity by the time a person types the key; make sure the
    // Rust crypto has fetched it too, or it cannot match the imported keys to it.
    if (!(await crypto.userHasCrossSigningKeys(userId, true))) {
        throw new Error(`${userId} has no cross-signing identity to verify against`);
    }
    await crypto.bootstrapCrossSigning({});
    await waitUntilSignedOnServer();
    const status = await crypto.getCrossSigningStatus();
    return {
        ready: await crypto.isCrossSigningReady(),
        private_keys_in_secret_storage: status.privateKeysInSecretStorage,
        private_keys_cached: status.privateKeysCachedLocally,
    };
}

async function stop() {
    // stopClient also stops the Rust crypto machine. Exit after this answer is written.
    client?.stopClient();
    setImmediate(() => process.exit(0));
    return null;
}

// ---------------------------------------------------------------------------- dispatch

const operations = {
    login,
    create_dm: createDm,
    create_room: createRoom,
    join,
    wait_for_join: waitForJoin,
    wait_for_invite: waitForInvite,
    send_text: sendText,
    next_message: nextMessage,
    send_reaction: sendReaction,
    reactions_on: reactionsOn,
    next_poll: nextPoll,
    send_poll_response: sendPollResponse,
    poll_ended: pollEnded,
    user_devices: userDevices,
    verify_with_recovery_key: verifyWithRecoveryKey,
    stop,
};

function answer(message) {
    protocolOut.write(`${JSON.stringify(message)}\n`);
}

async function handle(line) {
    let request;
    try {
        request = JSON.parse(line);
    } catch (error) {
        answer({ id: null, error: `not a JSON request: ${line.slice(0, 200)} (${error.message})` });
        return;
    }
    const { id, op, ...args } = request;
    const operation = operations[op];
    if (!operation) {
        answer({ id, error: `unknown op ${JSON.stringify(op)}; known: ${Object.keys(operations).join(", ")}` });
        return;
    }
    try {
        answer({ id, result: (await operation(args)) ?? null });
    } catch (error) {
        note(`${op} failed:`, error);
        const detail = error?.data?.error ?? error?.message ?? String(error);
        answer({ id, error: `${op}: ${detail}` });
    }
}

// Background failures inside js-sdk must not kill the process silently: log them, keep going.
process.on("unhandledRejection", (reason) => note("unhandled rejection:", reason));
process.on("uncaughtException", (error) => {
    note("uncaught exception:", error);
    answer({ id: null, error: `uncaught exception: ${error?.stack ?? error}` });
    process.exit(1);
});

const input = createInterface({ input: process.stdin, crlfDelay: Infinity });
input.on("line", (line) => {
    if (line.trim()) void handle(line);
});
// The test process went away (or closed our stdin): stop rather than linger.
input.on("close", () => void stop());
note("ready");
