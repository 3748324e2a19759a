// The client against a tiny fake server (the ws package), for what the
// real one does not do on demand: no answer to a refresh (an older server,
// or the article's), a refused refresh, an unasked refresh answer, closes
// with 1012, 1013, "token revoked" and other codes, raw frames, a client
// clock far ahead; and against an in-memory WebSocket with mocked timers,
// for the backoff over many seconds.
import assert from "node:assert/strict";
import { once } from "node:events";
import { test } from "node:test";
import { WebSocketServer } from "ws";

import { connectPusher } from "../dist/index.js";
import { isState, quiet, recorder } from "./helpers.js";

/**
 * fakeServer listens on a free port and calls onConnection(socket, url,
 * frames) for each connection; frames collects what the client sends,
 * times when each came (Date.now()). It closes when the test ends.
 */
async function fakeServer(t, onConnection) {
  const wss = new WebSocketServer({ host: "127.0.0.1", port: 0 });
  await once(wss, "listening");
  const conns = [];
  wss.on("connection", (socket, req) => {
    const conn = { socket, url: new URL(req.url, "ws://fake"), frames: [], times: [] };
    socket.on("message", (data) => {
      conn.times.push(Date.now());
      conn.frames.push(JSON.parse(String(data)));
    });
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
// server reads no signature, and the client reads only exp (and iat).
// claims adds to or overrides the payload.
function fakeToken(name, ms, claims = {}) {
  const part = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
  return `${part({ alg: "none" })}.${part({ uid: "u", name, exp: (Date.now() + ms) / 1000, ...claims })}.x`;
}

// claimsOf is a token's payload.
const claimsOf = (t) => JSON.parse(Buffer.from(t.split(".")[1], "base64url"));

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
  await waitFor("the second refresh", () => fake.conns[0]?.frames.length === 2, 12_000);
  // Measured where the frames arrived: the refusal went out as the first
  // came, so the second cannot come sooner than 5 s after it. The upper
  // bound leaves room for a busy machine's late timers and slow sockets;
  // it only has to tell 5 s from the next step (no retry, or 10 s).
  const [first, second] = fake.conns[0].times;
  const after = second - first;
  assert.ok(after >= 4_900 && after < 8_000, `second refresh ${after} ms after the first, want 5 s`);
  assert.equal(fake.conns.length, 1);
  assert.deepEqual(rec.states(), ["connecting", "open"]);
  assert.deepEqual(tokens, [], "getToken asked at connect and for each refresh");
});

test("reconnects after 1013 and 1012 with since=, stops after another code", async (t) => {
  const random = Math.random;
  Math.random = () => 0; // each wait is half the delay: 250 ms, then 500 ms
  t.after(() => (Math.random = random));
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
  // Connections that lasted less than 10 s do not start the backoff over:
  // the waits were 250 and 500 ms, and a retry now would come in 1 s.
  assert.deepEqual(rec.events.filter((e) => e.state === "reconnecting").map((e) => e.retryIn), [250, 500]);
  // 4000 stops it: past 1.2 s, no fourth connection.
  await quiet(1_200);
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

test("after 1008 token revoked, reconnects at once with getToken's next token and since=", async (t) => {
  const fake = await fakeServer(t, ({ socket, url }, n) => {
    if (n === 1) {
      socket.send(message(1, "m1"));
      socket.close(1008, "token revoked");
    } else if (url.searchParams.has("since")) {
      socket.send(JSON.stringify({ recovered: true }));
    }
  });
  const rec = recorder();
  const tokens = [fakeToken("revoked", 60_000), fakeToken("new", 60_000)];
  let asked = 0;
  const client = connectPusher({ url: fake.url, getToken: () => tokens[asked++], ...rec.callbacks });
  t.after(() => client.stop());
  await rec.until("onRecovered", (ev) => ev.some((e) => e.type === "recovered"));
  assert.deepEqual(rec.states(), ["connecting", "open", "reconnecting:1008", "connecting", "open"]);
  const retry = rec.events.find((e) => e.state === "reconnecting");
  assert.deepEqual([retry.reason, retry.retryIn], ["token revoked", 0]);
  assert.equal(asked, 2);
  assert.equal(fake.conns[1].url.searchParams.get("token"), tokens[1]);
  assert.equal(fake.conns[1].url.searchParams.get("since"), "e:1");

  // With a fixed token there is no new one to get: it stops.
  const fixed = recorder();
  const other = connectPusher({ url: fake.url, token: fakeToken("fixed", 60_000), ...fixed.callbacks });
  t.after(() => other.stop());
  await fixed.until("the next connection", () => fake.conns.length === 3);
  fake.conns[2].socket.close(1008, "token expired");
  await fixed.until("closed", isState("closed"));
  assert.deepEqual(fixed.states(), ["connecting", "open", "closed:1008"]);
  assert.equal(fixed.events.at(-1).reason, "token expired");
});

test("a token expired again soon after the immediate reconnect waits the usual backoff", async (t) => {
  const fake = await fakeServer(t, ({ socket }) => socket.close(1008, "token expired"));
  const rec = recorder();
  const client = connectPusher({ url: fake.url, getToken: () => fakeToken("short", 60_000), ...rec.callbacks });
  t.after(() => client.stop());
  await rec.until("the second reconnecting", (ev) => ev.filter((e) => e.state === "reconnecting").length === 2);
  client.stop();
  const waits = rec.events.filter((e) => e.state === "reconnecting").map((e) => e.retryIn);
  assert.equal(waits[0], 0, "the first reconnect after token expired is at once");
  assert.ok(waits[1] >= 250 && waits[1] <= 500, `then the backoff: ${waits[1]} ms, want 250-500`);
  assert.deepEqual(rec.states(), ["connecting", "open", "reconnecting:1008", "connecting", "open", "reconnecting:1008", "closed:1000"]);
});

test("callbacks that throw do not stop delivery or reconnects; their errors are reported", async (t) => {
  const errors = [];
  globalThis.reportError = (err) => errors.push(err.message);
  t.after(() => delete globalThis.reportError);
  const fake = await fakeServer(t, ({ socket, url }, n) => {
    if (url.searchParams.has("since")) socket.send(JSON.stringify({ recovered: true }));
    socket.send(message(n, `m${n}`));
    if (n === 1) socket.close(1013, "slow consumer");
  });
  const rec = recorder();
  let armed = true; // off once the test is over, with reportError gone
  const throwing = (name, f) => (...args) => {
    f(...args);
    if (armed) throw new Error(name);
  };
  const client = connectPusher({
    url: fake.url,
    getToken: () => fakeToken("t", 60_000),
    onState: throwing("onState", rec.callbacks.onState),
    onMessage: throwing("onMessage", rec.callbacks.onMessage),
    onRecovered: throwing("onRecovered", rec.callbacks.onRecovered),
  });
  t.after(() => {
    armed = false;
    client.stop();
  });
  await rec.until("the message after the reconnect", () => rec.messages().length === 2);
  assert.deepEqual(rec.states(), ["connecting", "open", "reconnecting:1013", "connecting", "open"]);
  assert.deepEqual(rec.messages().map((m) => m.message), ["m1", "m2"]);
  assert.equal(client.state, "open");
  client.stop(); // while reportError is still the test's
  assert.equal(client.state, "closed");
  await waitFor("the errors reported", () => errors.length === 9);
  assert.deepEqual(errors.sort(), ["onMessage", "onMessage", "onRecovered", "onState", "onState", "onState", "onState", "onState", "onState"]);
});

test("an unasked refresh answer is ignored: the planned refresh still goes", async (t) => {
  const fake = await fakeServer(t, ({ socket }) => {
    socket.send(JSON.stringify({ refreshed: true, exp: null }));
    socket.send(JSON.stringify({ refreshed: false, error: "no refresh was asked" }));
    socket.on("message", (data) => socket.send(JSON.stringify({ refreshed: true, exp: claimsOf(JSON.parse(String(data)).refresh).exp })));
  });
  const rec = recorder();
  const tokens = [fakeToken("first", 2_000), fakeToken("second", 60_000)];
  let asked = 0;
  const client = connectPusher({ url: fake.url, getToken: () => tokens[asked++], ...rec.callbacks });
  t.after(() => client.stop());
  // Planned at three quarters of the first token's 2 s.
  await waitFor("the refresh", () => fake.conns[0]?.frames.length === 1, 4_000);
  assert.deepEqual(fake.conns[0].frames, [{ refresh: tokens[1] }]);
  // Answered, it holds: no fallback reconnect 3 s later.
  await quiet(3_500);
  assert.equal(fake.conns.length, 1);
  assert.deepEqual(rec.states(), ["connecting", "open"]);
});

test("a token with iat is refreshed at three quarters of its lifetime, whatever the client's clock says", async (t) => {
  const fake = await fakeServer(t, ({ socket }) => {
    socket.on("message", (data) => socket.send(JSON.stringify({ refreshed: true, exp: claimsOf(JSON.parse(String(data)).refresh).exp })));
  });
  // A client clock an hour ahead of the issuer's: by this clock, each
  // token expired long ago. Their lifetimes, 2 s and a minute, stand.
  const issued = Date.now() / 1000 - 3600;
  const tokens = [
    fakeToken("first", 0, { iat: issued, exp: issued + 2 }),
    fakeToken("second", 0, { iat: issued, exp: issued + 60 }),
  ];
  const rec = recorder();
  let asked = 0;
  const got = []; // when getToken answered
  const client = connectPusher({
    url: fake.url,
    getToken: () => {
      got.push(Date.now());
      return tokens[asked++];
    },
    ...rec.callbacks,
  });
  t.after(() => client.stop());
  await waitFor("the refresh", () => fake.conns[0]?.frames.length === 1, 5_000);
  const after = fake.conns[0].times[0] - got[0];
  assert.ok(after >= 1_450 && after < 4_000, `refreshed ${after} ms after getToken, want 1.5 s`);
  assert.deepEqual(fake.conns[0].frames, [{ refresh: tokens[1] }]);
  assert.deepEqual(rec.states(), ["connecting", "open"]);
});

// MemorySocket is a WebSocket without a network, for tests with mocked
// timers: the test opens and closes it.
class MemorySocket {
  static all = [];
  readyState = 0;
  onopen = null;
  onmessage = null;
  onclose = null;
  onerror = null;
  constructor(url) {
    this.url = new URL(url);
    MemorySocket.all.push(this);
  }
  send() {}
  close(code = 1005, reason = "") {
    this.end(code, reason);
  }
  open() {
    this.readyState = 1;
    this.onopen?.({});
  }
  end(code, reason) {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
}

test("the backoff starts over only after a connection stayed open 10 s", async (t) => {
  const random = Math.random;
  Math.random = () => 0; // each wait is half the delay
  t.after(() => (Math.random = random));
  t.mock.timers.enable({ apis: ["setTimeout"] });
  MemorySocket.all = [];
  // open() waits for the token: let its promise settle.
  const settle = () => new Promise((resolve) => setImmediate(resolve));
  const rec = recorder();
  const client = connectPusher({ url: "ws://memory/ws", token: "t", WebSocket: MemorySocket, ...rec.callbacks });
  t.after(() => client.stop());
  const waits = () => rec.events.filter((e) => e.state === "reconnecting").map((e) => e.retryIn);
  // connect opens socket n, keeps it open for ms, and closes it with 1013.
  const connect = async (n, ms) => {
    await settle();
    assert.equal(MemorySocket.all.length, n, `socket ${n} made`);
    MemorySocket.all[n - 1].open();
    t.mock.timers.tick(ms);
    MemorySocket.all[n - 1].end(1013, "slow consumer");
    t.mock.timers.tick(waits().at(-1));
  };
  // A slow consumer closed at once, again and again, backs off.
  await connect(1, 0);
  await connect(2, 100);
  await connect(3, 9_999);
  assert.deepEqual(waits(), [250, 500, 1_000]);
  // A connection that stayed open 10 s was healthy: the next wait is the
  // first one again, and then the delay doubles again.
  await connect(4, 10_000);
  await connect(5, 0);
  assert.deepEqual(waits(), [250, 500, 1_000, 250, 500]);
  await settle();
  assert.equal(MemorySocket.all.length, 6);
});
