// The client against the real go-pusher binary (PUSHER_BIN).
import assert from "node:assert/strict";
import { test } from "node:test";

import { connectPusher } from "../dist/index.js";
import { api, isState, quiet, recorder, recordingWebSocket, send, startServer, token, waitOnline } from "./helpers.js";

// expOf is a token's exp claim, in ms.
const expOf = (t) => JSON.parse(Buffer.from(t.split(".")[1], "base64url")).exp * 1000;

test("receives pushed messages with their offsets, and stop closes with 1000", async (t) => {
  const server = await startServer(t);
  const rec = recorder();
  const client = connectPusher({ url: server.url, getToken: () => token("alice"), ...rec.callbacks });
  t.after(() => client.stop());
  await rec.until("open", isState("open"));
  assert.equal(client.state, "open");
  await waitOnline(server, "alice");

  const sent = ["hello", "two\nlines, 世界 🚀", '{"type":"order.shipped"}', "authenticate error: only a message"];
  for (const m of sent) await send(server, "alice", m);
  await rec.until("4 messages", () => rec.messages().length === 4);
  const got = rec.messages();
  assert.deepEqual(got.map((m) => m.message), sent);
  const epoch = got[0].offset.split(":")[0];
  assert.deepEqual(got.map((m) => m.offset), [1, 2, 3, 4].map((n) => `${epoch}:${n}`));
  assert.ok(got.every((m) => m.replayed === false), "live messages are not replayed");
  assert.equal(client.offset, `${epoch}:4`);

  client.stop();
  assert.equal(client.state, "closed");
  assert.deepEqual(rec.states(), ["connecting", "open", "closed:1000"]);
  await waitOnline(server, "alice", false);
});

test("since= replays what came after an offset, then onRecovered(true, n)", async (t) => {
  const server = await startServer(t);
  // A first client keeps bob online: /send answers 404 to a uid with no
  // connection, and stores nothing then.
  const first = recorder();
  const a = connectPusher({ url: server.url, token: await token("bob"), ...first.callbacks });
  t.after(() => a.stop());
  await waitOnline(server, "bob");
  for (const m of ["one", "two", "three"]) await send(server, "bob", m);
  await first.until("3 messages", () => first.messages().length === 3);

  const rec = recorder();
  const urls = [];
  const since = first.messages()[0].offset;
  const b = connectPusher({ url: server.url, token: await token("bob"), since, WebSocket: recordingWebSocket(urls), ...rec.callbacks });
  t.after(() => b.stop());
  await rec.until("onRecovered", (ev) => ev.some((e) => e.type === "recovered"));
  assert.equal(urls[0].searchParams.get("since"), since);
  assert.equal(urls[0].searchParams.get("format"), "json");
  await send(server, "bob", "four");
  await rec.until("the live message", () => rec.messages().length === 3);
  const seen = rec.events.filter((e) => e.type !== "state").map((e) => (e.type === "recovered" ? `recovered ${e.complete} ${e.missed}` : `${e.message} ${e.replayed}`));
  assert.deepEqual(seen, ["two true", "three true", "recovered true 2", "four false"]);

  // An offset of an epoch the server does not know: it cannot tell what
  // was missed.
  const lost = recorder();
  const c = connectPusher({ url: server.url, token: await token("bob"), since: "unknownepoch:1", ...lost.callbacks });
  t.after(() => c.stop());
  await lost.until("onRecovered", (ev) => ev.some((e) => e.type === "recovered"));
  assert.deepEqual(lost.events.filter((e) => e.type === "recovered").map((e) => [e.complete, e.missed]), [[false, 0]]);
});

test("reconnects after a shutdown (1001) with since=, to a new server process", async (t) => {
  const server = await startServer(t);
  const rec = recorder();
  const urls = [];
  const client = connectPusher({ url: server.url, getToken: () => token("carol"), WebSocket: recordingWebSocket(urls), ...rec.callbacks });
  t.after(() => client.stop());
  await waitOnline(server, "carol");
  await send(server, "carol", "before");
  await rec.until("the first message", () => rec.messages().length === 1);
  const offset = rec.messages()[0].offset;

  await server.stop(); // SIGTERM: the server closes its connections with 1001
  await rec.until("reconnecting after 1001", isState("reconnecting", 1001));
  const retry = rec.events.find((e) => e.state === "reconnecting");
  assert.ok(retry.retryIn >= 250 && retry.retryIn <= 500, `first retry in ${retry.retryIn} ms, want 250-500`);

  // The same address again: the attempts meanwhile fail (1006) and go on.
  const again = await startServer(t, server.addr);
  await rec.until("onRecovered", (ev) => ev.some((e) => e.type === "recovered"), 15_000);
  assert.equal(urls.at(-1).searchParams.get("since"), offset);
  // The new process started with an empty history and a new epoch.
  assert.deepEqual(rec.events.filter((e) => e.type === "recovered").map((e) => e.complete), [false]);
  await send(again, "carol", "after");
  await rec.until("the message after the restart", () => rec.messages().length === 2);
  assert.equal(rec.messages()[1].message, "after");
  assert.notEqual(rec.messages()[1].offset.split(":")[0], offset.split(":")[0], "a new process has a new epoch");
  const states = rec.states();
  assert.deepEqual(states.slice(0, 3), ["connecting", "open", "reconnecting:1001"]);
  assert.deepEqual(states.slice(-2), ["connecting", "open"]);
  assert.ok(states.slice(3, -2).every((s) => s === "connecting" || s === "reconnecting:1006"), `states ${states}`);
});

test("stops after 1008, reporting the server's refusal", async (t) => {
  const server = await startServer(t);
  const rec = recorder();
  let asked = 0;
  const urls = [];
  connectPusher({
    url: server.url,
    getToken: () => (asked++, "not.a.jwt"),
    WebSocket: recordingWebSocket(urls),
    ...rec.callbacks,
  });
  await rec.until("closed", isState("closed"));
  const closed = rec.events.at(-1);
  assert.equal(closed.code, 1008);
  assert.match(closed.reason, /^authenticate error: token is malformed/);
  // A retry would come within 0.5 s (the first backoff): a second of
  // nothing proves there is none.
  await quiet(1000);
  // The server upgrades, then refuses: "open" comes before the close.
  assert.deepEqual(rec.states(), ["connecting", "open", "closed:1008"]);
  assert.equal(urls.length, 1);
  assert.equal(asked, 1);
});

test("stops after /disconnect's 1008", async (t) => {
  const server = await startServer(t);
  const rec = recorder();
  const client = connectPusher({ url: server.url, getToken: () => token("dave"), ...rec.callbacks });
  t.after(() => client.stop());
  await waitOnline(server, "dave");
  const res = await api(server, "/disconnect", { uid: "dave" });
  assert.equal(res.status, 200, res.body);
  await rec.until("closed", isState("closed"));
  assert.equal(rec.events.at(-1).reason, "disconnected");
  await quiet(1000); // as above: a retry would come within 0.5 s
  assert.deepEqual(rec.states(), ["connecting", "open", "closed:1008"]);
  assert.equal(client.state, "closed");
});

test("refreshes short-lived tokens in band: one connection outlives them", async (t) => {
  const server = await startServer(t);
  const rec = recorder();
  const urls = [];
  const tokens = [];
  const getToken = async () => {
    const tok = await token("erin", "3s");
    tokens.push(tok);
    return tok;
  };
  const client = connectPusher({ url: server.url, getToken, WebSocket: recordingWebSocket(urls), ...rec.callbacks });
  t.after(() => client.stop());
  await waitOnline(server, "erin");
  // Each token is refreshed when three quarters of its life are gone:
  // the third is asked for after the first expired.
  const deadline = Date.now() + 10_000;
  while (tokens.length < 3 || Date.now() < expOf(tokens[0]) + 500) {
    assert.ok(Date.now() < deadline, `getToken asked ${tokens.length} times in 10 s`);
    await quiet(50);
  }
  await send(server, "erin", "after the first expiry");
  await rec.until("the message", () => rec.messages().length === 1);
  assert.deepEqual(rec.states(), ["connecting", "open"], "one connection, still open");
  assert.equal(urls.length, 1);
});

test("a failing getToken is retried with backoff", async (t) => {
  const server = await startServer(t);
  const rec = recorder();
  let asked = 0;
  const getToken = async () => {
    if (++asked === 1) throw new Error("identity provider down");
    return token("fay");
  };
  const client = connectPusher({ url: server.url, getToken, ...rec.callbacks });
  t.after(() => client.stop());
  await rec.until("open", isState("open"));
  assert.deepEqual(rec.states(), ["reconnecting:1006", "connecting", "open"]);
  assert.equal(rec.events[0].reason, "getToken: Error: identity provider down");
  assert.equal(asked, 2);
});

test("stop() while reconnecting ends it", async (t) => {
  const server = await startServer(t);
  const rec = recorder();
  const client = connectPusher({ url: server.url, getToken: () => token("gus"), ...rec.callbacks });
  await rec.until("open", isState("open"));
  server.proc.kill("SIGKILL"); // no close frame: 1006
  await rec.until("reconnecting", isState("reconnecting", 1006));
  const retryIn = rec.events.at(-1).retryIn;
  client.stop();
  // The attempt was due within retryIn: past it, nothing happened.
  await quiet(retryIn + 300);
  assert.deepEqual(rec.states(), ["connecting", "open", "reconnecting:1006", "closed:1000"]);
});

test("after 1008 token expired, reconnects at once with a new token and since=", async (t) => {
  const server = await startServer(t);
  const rec = recorder();
  const urls = [];
  // The in-band refresh does not land: getToken fails until the first
  // token has expired (an identity provider down for a while).
  const first = await token("ivy", "2s");
  let asked = 0;
  const getToken = async () => {
    if (++asked === 1) return first;
    if (Date.now() < expOf(first)) throw new Error("identity provider down");
    return token("ivy");
  };
  const client = connectPusher({ url: server.url, getToken, WebSocket: recordingWebSocket(urls), ...rec.callbacks });
  t.after(() => client.stop());
  await waitOnline(server, "ivy");
  await send(server, "ivy", "before");
  await rec.until("the first message", () => rec.messages().length === 1);
  await rec.until("reconnecting after token expired", isState("reconnecting", 1008), 5_000);
  const retry = rec.events.at(-1);
  assert.deepEqual([retry.reason, retry.retryIn], ["token expired", 0]);
  await rec.until("onRecovered", (ev) => ev.some((e) => e.type === "recovered"));
  assert.equal(urls.length, 2);
  assert.equal(urls[1].searchParams.get("since"), rec.messages()[0].offset);
  assert.notEqual(urls[1].searchParams.get("token"), first);
  assert.deepEqual(rec.events.filter((e) => e.type === "recovered").map((e) => [e.complete, e.missed]), [[true, 0]]);
  await send(server, "ivy", "after");
  await rec.until("the message after the reconnect", () => rec.messages().length === 2);
  assert.deepEqual(rec.states(), ["connecting", "open", "reconnecting:1008", "connecting", "open"]);
});

test("a getToken that returns only the expired token stops after one refused attempt", async (t) => {
  const server = await startServer(t);
  const rec = recorder();
  const urls = [];
  const stale = await token("jay", "2s");
  let asked = 0;
  const client = connectPusher({ url: server.url, getToken: () => (asked++, stale), WebSocket: recordingWebSocket(urls), ...rec.callbacks });
  t.after(() => client.stop());
  await rec.until("closed", isState("closed"), 5_000);
  assert.match(rec.events.at(-1).reason, /^authenticate error: token is expired/);
  // A retry would come within 0.5 s (the first backoff): a second of
  // nothing proves there is none.
  await quiet(1000);
  assert.deepEqual(rec.states(), ["connecting", "open", "reconnecting:1008", "connecting", "open", "closed:1008"]);
  assert.equal(urls.length, 2);
  assert.ok(asked >= 2, `getToken asked ${asked} times`);
});
