// The client against a tiny fake server (the ws package), for what the
// real one does not do on demand: no answer to a refresh (an older server,
// or the article's), a refused refresh, closes with 1012 and other codes,
// raw frames.
import assert from "node:assert/strict";
import { once } from "node:events";
import { test } from "node:test";
import { WebSocketServer } from "ws";

import { connectPusher } from "../dist/index.js";
import { isState, quiet, recorder } from "./helpers.js";

/**
 * fakeServer listens on a free port and calls onConnection(socket, url,
 * frames) for each connection; frames collects what the client sends.
 * It closes when the test ends.
 */
async function fakeServer(t, onConnection) {
  const wss = new WebSocketServer({ host: "127.0.0.1", port: 0 });
  await once(wss, "listening");
  const conns = [];
  wss.on("connection", (socket, req) => {
    const conn = { socket, url: new URL(req.url, "ws://fake"), frames: [] };
    socket.on("message", (data) => conn.frames.push(JSON.parse(String(data))));
    conns.push(conn);
    onConnection(conn, conns.length);
  });
  t.after(async () => {
    for (const c of wss.clients) c.terminate();
    await new Promise((resolve) => wss.close(resolve));
  });
  return { url: `ws://127.0.0.1:${wss.address().port}/ws`, conns };
}

// fakeToken is an unsigned JWT-shaped token that expires in ms: the fake
// server reads no signature, and the client reads only exp.
function fakeToken(name, ms) {
  const part = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
  return `${part({ alg: "none" })}.${part({ uid: "u", name, exp: (Date.now() + ms) / 1000 })}.x`;
}

// waitFor polls cond every 10 ms until it holds, for at most ms.
async function waitFor(what, cond, ms = 5_000) {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`waited ${ms} ms for ${what}`);
    await quiet(10);
  }
}

const message = (n, text) => JSON.stringify({ id: `id${n}`, offset: `e:${n}`, message: text });

test("reconnects with the new token and since= when a refresh gets no answer", async (t) => {
  const fake = await fakeServer(t, ({ socket, url }) => {
    if (url.searchParams.has("since")) socket.send(JSON.stringify({ recovered: true }));
    else socket.send(message(1, "m1"));
  });
  const rec = recorder();
  const first = fakeToken("first", 2_000);
  const tokens = [first, fakeToken("second", 60_000)];
  let asked = 0;
  const client = connectPusher({ url: fake.url, getToken: () => tokens[asked++], ...rec.callbacks });
  t.after(() => client.stop());
  await rec.until("the second connection open", (ev) => ev.filter((e) => e.state === "open").length === 2);
  const [a, b] = fake.conns;
  assert.deepEqual(a.frames, [{ refresh: tokens[1] }], "the refresh went in band first");
  assert.equal(a.socket.readyState, a.socket.CLOSED, "the client closed the first connection");
  assert.equal(b.url.searchParams.get("token"), tokens[1]);
  assert.equal(b.url.searchParams.get("since"), "e:1");
  assert.equal(asked, 2, "the reconnect used the token the server did not take");
  assert.ok(rec.events.at(-1).at < JSON.parse(Buffer.from(first.split(".")[1], "base64url")).exp * 1000, "reconnected before the first token expired");
  assert.deepEqual(rec.states(), ["connecting", "open", "reconnecting:1000", "connecting", "open"]);
  assert.equal(rec.events.find((e) => e.state === "reconnecting").retryIn, 0);
  await rec.until("onRecovered", (ev) => ev.some((e) => e.type === "recovered"));
});

test("a refused refresh is tried again 5 s later", async (t) => {
  let answers = 0;
  const fake = await fakeServer(t, ({ socket }) => {
    socket.on("message", () => {
      const ok = ++answers > 1;
      socket.send(JSON.stringify(ok ? { refreshed: true, exp: null } : { refreshed: false, error: "token is for another uid" }));
    });
  });
  const rec = recorder();
  const tokens = [fakeToken("first", 1_000), fakeToken("refused", 60_000), fakeToken("taken", 120_000)];
  const client = connectPusher({ url: fake.url, getToken: () => tokens.shift(), ...rec.callbacks });
  t.after(() => client.stop());
  await waitFor("the first refresh", () => fake.conns[0]?.frames.length === 1);
  const refused = Date.now();
  await waitFor("the second refresh", () => fake.conns[0].frames.length === 2, 8_000);
  const after = Date.now() - refused;
  assert.ok(after >= 4_900 && after < 6_000, `second refresh ${after} ms after the first, want 5 s`);
  assert.equal(fake.conns.length, 1);
  assert.deepEqual(rec.states(), ["connecting", "open"]);
  assert.deepEqual(tokens, [], "getToken asked at connect and for each refresh");
});

test("reconnects after 1013 and 1012 with since=, stops after another code", async (t) => {
  const fake = await fakeServer(t, ({ socket }, n) => {
    socket.send(message(n, `m${n}`));
    const [code, reason] = [[1013, "slow consumer"], [1012, "missed messages: reconnect with since"], [4000, "go away"]][n - 1];
    socket.close(code, reason);
  });
  const rec = recorder();
  const client = connectPusher({ url: fake.url, token: fakeToken("fixed", 60_000), ...rec.callbacks });
  t.after(() => client.stop());
  await rec.until("closed", isState("closed"), 10_000);
  assert.deepEqual(rec.states(), ["connecting", "open", "reconnecting:1013", "connecting", "open", "reconnecting:1012", "connecting", "open", "closed:4000"]);
  assert.equal(rec.events.at(-1).reason, "go away");
  assert.deepEqual(fake.conns.map((c) => c.url.searchParams.get("since")), [null, "e:1", "e:2"]);
  // Each open reset the backoff to 0.5 s: past a second, no fourth connection.
  await quiet(1_000);
  assert.equal(fake.conns.length, 3);
  assert.equal(client.state, "closed");
});

test("backs off from 0.5 s, doubling, each wait randomised between half and all", async (t) => {
  // Every upgrade refused (401): each attempt ends in 1006 without
  // opening, so the delay never starts over. On Node 20 this also checks
  // that a failed handshake, which fires an error and no close there,
  // ends the attempt.
  const wss = new WebSocketServer({ host: "127.0.0.1", port: 0, verifyClient: () => false });
  await once(wss, "listening");
  t.after(() => new Promise((resolve) => wss.close(resolve)));
  const random = Math.random;
  const draws = [0, 0.5, 0.999];
  Math.random = () => draws.shift() ?? 0;
  t.after(() => (Math.random = random));
  const rec = recorder();
  const client = connectPusher({ url: `ws://127.0.0.1:${wss.address().port}/ws`, token: "t", ...rec.callbacks });
  t.after(() => client.stop());
  await rec.until("3 retries", (ev) => ev.filter((e) => e.state === "reconnecting").length === 3);
  const waits = rec.events.filter((e) => e.state === "reconnecting").map((e) => Math.round(e.retryIn));
  assert.deepEqual(waits, [250, 750, 1999]);
  assert.deepEqual(rec.states(), ["connecting", "reconnecting:1006", "connecting", "reconnecting:1006", "connecting", "reconnecting:1006"]);
});

test("a raw frame (a server without format=json) is a message without offset", async (t) => {
  const fake = await fakeServer(t, ({ socket }) => socket.send('{"type":"raw"}'));
  const rec = recorder();
  const client = connectPusher({ url: fake.url, token: "t", ...rec.callbacks });
  t.after(() => client.stop());
  await rec.until("the message", () => rec.messages().length === 1);
  const [m] = rec.messages();
  assert.deepEqual([m.message, m.offset, m.replayed], ['{"type":"raw"}', "", false]);
});

test("options are checked at once", () => {
  assert.throws(() => connectPusher({ url: "ws://127.0.0.1:1/ws" }), /give token/);
  assert.throws(() => connectPusher({ url: "http://127.0.0.1:1/ws", token: "t" }), /ws: or wss:/);
});
