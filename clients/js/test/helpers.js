// Helpers for the tests: a real go-pusher process (PUSHER_BIN, built by
// scripts/test-js.sh), tokens minted by it, /send, and a recorder that
// waits for the client's callbacks with a deadline.
import { execFile, spawn } from "node:child_process";
import { once } from "node:events";
import { promisify } from "node:util";

export const jwtSecret = "dev-only-jwt-secret-change-me-0123456789";
export const apiKey = "dev-only-api-key-change-me-0123456789";
const env = { ...process.env, JWT_SECRET: jwtSecret, PUSHER_API_KEY: apiKey };

// bin is the go-pusher binary under test. Without it the tests fail: they
// never skip.
function bin() {
  const path = process.env.PUSHER_BIN;
  if (!path) throw new Error("PUSHER_BIN is not set: run scripts/test-js.sh, or build go-pusher and set it");
  return path;
}

/**
 * startServer runs go-pusher on addr (a free port by default) and resolves
 * with { addr, proc, stop } once it logs that it listens. The process is
 * stopped when the test ends.
 */
export async function startServer(t, addr = "127.0.0.1:0") {
  const proc = spawn(bin(), ["-addr", addr, "-message-log", "none"], { env, stdio: ["ignore", "ignore", "pipe"] });
  const exited = once(proc, "exit");
  t.after(() => stopProcess(proc, exited));
  let stderr = "";
  const listening = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`go-pusher did not listen within 10 s:\n${stderr}`)), 10_000);
    proc.stderr.setEncoding("utf8");
    proc.stderr.on("data", (chunk) => {
      stderr += chunk;
      const m = /msg=listening addr=(\S+)/.exec(stderr);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
    proc.on("exit", (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`go-pusher exited (${code ?? signal}) before it listened:\n${stderr}`));
    });
  });
  return {
    addr: listening,
    url: `ws://${listening}/ws`,
    proc,
    // stop sends SIGTERM (the server closes its connections with 1001)
    // and waits for the process to exit.
    stop: () => stopProcess(proc, exited),
  };
}

async function stopProcess(proc, exited) {
  if (proc.exitCode !== null || proc.signalCode !== null) return;
  proc.kill("SIGTERM");
  const timer = setTimeout(() => proc.kill("SIGKILL"), 10_000);
  await exited;
  clearTimeout(timer);
}

/** token mints a token for uid that lasts ttl (a Go duration), with go-pusher's token command. */
export async function token(uid, ttl = "1h") {
  const { stdout } = await promisify(execFile)(bin(), ["token", "-uid", uid, "-ttl", ttl], { env });
  return stdout.trim();
}

/** api calls an API endpoint of server with the API key and returns { status, body }. */
export async function api(server, path, body) {
  const res = await fetch(`http://${server.addr}${path}`, {
    method: "POST",
    headers: { Authorization: "Bearer " + apiKey, "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  return { status: res.status, body: await res.text() };
}

/** send pushes message to uid and fails unless /send answers 200. */
export async function send(server, uid, message) {
  const res = await api(server, "/send", { uid, message });
  if (res.status !== 200) throw new Error(`/send to ${uid}: ${res.status} ${res.body}`);
}

/** waitOnline waits until POST /online says uid is connected (registered on the server, not only open in the client). */
export async function waitOnline(server, uid, want = true) {
  const deadline = Date.now() + 5_000;
  for (;;) {
    const res = await api(server, "/online", { uids: [uid] });
    if (JSON.parse(res.body).online.includes(uid) === want) return;
    if (Date.now() > deadline) throw new Error(`${uid} still ${want ? "offline" : "online"} after 5 s`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * recorder collects what a client reports through its callbacks, in
 * order: { type: "message", message, offset, replayed }, { type: "state",
 * state, code, reason, retryIn } and { type: "recovered", complete,
 * missed }. until(what, pred) waits for pred(events) with a deadline.
 */
export function recorder() {
  const events = [];
  const waiters = new Set();
  const push = (e) => {
    e.at = Date.now();
    events.push(e);
    for (const w of waiters) if (w.pred(events)) w.done();
  };
  const until = (what, pred, ms = 5_000) =>
    new Promise((resolve, reject) => {
      if (pred(events)) return resolve(events);
      const w = {
        pred,
        done: () => {
          waiters.delete(w);
          clearTimeout(timer);
          resolve(events);
        },
      };
      const timer = setTimeout(() => {
        waiters.delete(w);
        reject(new Error(`waited ${ms} ms for ${what}; the client reported:\n${JSON.stringify(events, null, 1)}`));
      }, ms);
      waiters.add(w);
    });
  return {
    events,
    until,
    /** states lists the states as "state" or "state:code". */
    states: () => events.filter((e) => e.type === "state").map((e) => (e.code ? `${e.state}:${e.code}` : e.state)),
    messages: () => events.filter((e) => e.type === "message"),
    callbacks: {
      onMessage: (message, offset, replayed) => push({ type: "message", message, offset, replayed }),
      onState: (change) => push({ type: "state", ...change }),
      onRecovered: (complete, missed) => push({ type: "recovered", complete, missed }),
    },
  };
}

/** isState is a predicate for until: the last state is state (with code, when given). */
export const isState = (state, code) => (events) => {
  const last = events.filter((e) => e.type === "state").at(-1);
  return last?.state === state && (code === undefined || last.code === code);
};

/** recordingWebSocket returns a WebSocket class that notes each URL it opens, in urls. */
export function recordingWebSocket(urls) {
  return class extends WebSocket {
    constructor(url) {
      urls.push(new URL(url));
      super(url);
    }
  };
}

/** quiet resolves after ms: only for proving that something does not happen, each use says why that long is enough. */
export const quiet = (ms) => new Promise((r) => setTimeout(r, ms));
