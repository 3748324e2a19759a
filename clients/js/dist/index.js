// go-pusher-client: listens on a go-pusher /ws endpoint, in browsers and in
// Node. It connects with format=json, reconnects with backoff after the
// closes that a retry can cure, asks for what it missed (since=), and keeps
// one connection open across token expiries by refreshing the token in band.
// No dependencies: it needs a WebSocket, the global one or one passed in.
/**
 * Close codes after which the client reconnects with backoff: going away,
 * connection lost, missed messages, slow consumer. (With `getToken`, a
 * 1008 "token expired" or "token revoked" also leads to a reconnect, with
 * a new token: see PusherClient.)
 */
export const RETRY_CODES = [1001, 1006, 1012, 1013];
// The close reasons of 1008 after which a new token from getToken may be
// let in: the token of an open connection expired or was revoked. A
// refusal at connect, a /disconnect or the connection limit are not.
const NEW_TOKEN_REASONS = ["token expired", "token revoked"];
const OPEN = 1; // WebSocket.OPEN, the same in every implementation
const firstDelay = 500; // ms; the backoff doubles from here...
const maxDelay = 30000; // ...up to here
// stableAfter is how long a connection stays open before the delay starts
// over: a server that closes each connection soon after it opens (1013,
// slow consumer, again and again) gets a backoff, not a reconnect every
// 0.25-0.5 s; a connection that ran a while reconnects fast.
const stableAfter = 10000;
const refusedRefreshRetry = 5000; // ms after a refused refresh, or when getToken has nothing newer
// refreshAnswerWait bounds the wait for {"refreshed": ...}: a server without
// in-band refresh never answers, and then the client reconnects with the new
// token. A server that has it answers within a round trip.
const refreshAnswerWait = 3000;
const maxTimeout = 2 ** 31 - 1; // the longest setTimeout delay, ms
/** connectPusher starts a client and returns it; call `stop()` to end it. */
export function connectPusher(options) {
    return new PusherClient(options);
}
/**
 * PusherClient connects as it is made, like a WebSocket, and holds at
 * most one WebSocket at a time. After a close with a code in RETRY_CODES
 * it reconnects in 0.5 s doubling to 30 s (each wait randomised between
 * half and all of it, so that clients dropped together do not come back
 * together; the delay starts over once a connection has stayed open 10 s),
 * with since= the last offset it saw. With getToken, after 1008 "token
 * expired" or "token revoked" it reconnects at once with a new token (the
 * usual backoff if that happens again within 10 s). After any other 1008
 * (a refused token, the connection limit, a /disconnect) and any other
 * code it stops: state "closed".
 */
export class PusherClient {
    constructor(options) {
        // Each token goes with when the client got it (now(), ms): a token with
        // iat is timed by its lifetime from then, not by this clock's idea of exp.
        this.current = ""; // the token of ws
        this.currentGot = 0;
        this.pending = ""; // a token sent in band, not answered yet ("": no refresh outstanding)
        this.pendingGot = 0;
        this.nextToken = ""; // a token for the next connect, instead of asking getToken
        this.nextGot = 0;
        this.delay = firstDelay;
        this.renewedAtOnce = false; // reconnected at once after "token expired"/"token revoked", and no connection was stable since
        this.stopped = false;
        this.replacing = false; // ws is being closed to reconnect with a new token
        this.currentState = "connecting";
        if (typeof options.token !== "string" && typeof options.getToken !== "function") {
            throw new TypeError("go-pusher-client: give token (a string) or getToken (a function)");
        }
        const WebSocketClass = options.WebSocket ?? globalThis.WebSocket;
        if (!WebSocketClass) {
            throw new TypeError("go-pusher-client: no global WebSocket: pass one as the WebSocket option");
        }
        this.url = new URL(String(options.url)); // throws on a malformed URL
        if (this.url.protocol !== "ws:" && this.url.protocol !== "wss:") {
            throw new TypeError("go-pusher-client: url must be ws: or wss:, not " + this.url.protocol);
        }
        this.options = options;
        this.WebSocketClass = WebSocketClass;
        this.since = options.since ?? "";
        this.start();
    }
    /** The current state. */
    get state() {
        return this.currentState;
    }
    /** The offset of the last message received ("" before the first): a later client may start after it. */
    get offset() {
        return this.since;
    }
    /**
     * stop closes the connection with 1000 and reconnects no more. It reports
     * "closed" at once, and no callback is called after it.
     */
    stop() {
        if (this.stopped)
            return;
        this.stopped = true;
        this.replacing = false;
        this.clearTimers();
        clearTimeout(this.retryTimer);
        // The socket's handlers check that it is still this.ws, so none of
        // them calls back from here on.
        const ws = this.ws;
        this.ws = undefined;
        ws?.close(1000);
        this.report({ state: "closed", code: 1000 });
    }
    /** close is stop, for code that expects the WebSocket's name. */
    close() {
        this.stop();
    }
    report(change) {
        this.currentState = change.state;
        this.call(this.options.onState, change);
    }
    // call calls one of the user's callbacks. One that throws must not stop
    // the client half way through a step: its error is thrown again on its
    // own, where the platform reports it (reportError, or a microtask).
    call(callback, ...args) {
        if (!callback)
            return;
        try {
            callback.apply(this.options, args);
        }
        catch (err) {
            rethrow(err);
        }
    }
    clearTimers() {
        clearTimeout(this.renewTimer);
        clearTimeout(this.answerTimer);
        clearTimeout(this.stableTimer);
    }
    // start begins a connection attempt. open catches what it expects; an
    // error it does not is thrown on its own, as a callback's is, and never
    // becomes an unhandled rejection.
    start() {
        this.open().catch(rethrow);
    }
    // token is the token for a connect, with when the client got it: the
    // one a refresh could not send in band, else getToken's, else the
    // fixed one.
    async token() {
        if (this.nextToken) {
            const t = [this.nextToken, this.nextGot];
            this.nextToken = "";
            return t;
        }
        const t = this.options.getToken ? await this.options.getToken() : this.options.token;
        return [t, now()];
    }
    async open() {
        if (this.stopped)
            return;
        let token;
        let got;
        try {
            [token, got] = await this.token();
        }
        catch (err) {
            if (!this.stopped)
                this.again(1006, "getToken: " + String(err));
            return;
        }
        if (this.stopped)
            return;
        const url = new URL(this.url);
        url.searchParams.set("format", "json");
        url.searchParams.set("token", token);
        if (this.since)
            url.searchParams.set("since", this.since);
        let ws;
        try {
            ws = new this.WebSocketClass(url.href);
        }
        catch (err) {
            // A WebSocket class that throws refuses this URL: retrying cannot help.
            this.stopped = true;
            this.report({ state: "closed", reason: "WebSocket: " + String(err) });
            return;
        }
        this.ws = ws;
        this.current = token;
        this.currentGot = got;
        let refusal = ""; // the "authenticate error: ..." text before a 1008
        let replaying = this.since !== ""; // messages before {"recovered": ...} are replayed
        let missed = 0;
        let opened = false;
        ws.onopen = () => {
            if (ws !== this.ws)
                return;
            opened = true;
            this.stableTimer = setTimeout(() => {
                this.delay = firstDelay;
                this.renewedAtOnce = false;
            }, stableAfter);
            this.plan(token, got, claims(token).exp);
            this.report({ state: "open" });
        };
        ws.onmessage = (event) => {
            if (ws !== this.ws || typeof event.data !== "string")
                return;
            // A refused connection gets this text, then 1008; pushed messages
            // are JSON objects, so one cannot pass for it.
            if (event.data.startsWith("authenticate error: ")) {
                refusal = event.data;
                return;
            }
            const frame = parseFrame(event.data);
            if (typeof frame?.message === "string" && typeof frame.offset === "string") {
                if (replaying)
                    missed++;
                this.since = frame.offset;
                this.call(this.options.onMessage, frame.message, frame.offset, replaying);
            }
            else if (frame && "refreshed" in frame) {
                this.answered(frame);
            }
            else if (frame && "recovered" in frame) {
                replaying = false;
                this.call(this.options.onRecovered, frame.recovered === true, missed);
            }
            else {
                // A server without format=json (the article's) sends the message alone.
                this.call(this.options.onMessage, event.data, "", false);
            }
        };
        const ended = (code, closeReason) => {
            if (ws !== this.ws)
                return;
            this.ws = undefined;
            this.clearTimers();
            this.pending = "";
            if (this.replacing) {
                this.replacing = false;
                this.report({ state: "reconnecting", code, reason: "reconnecting with a new token", retryIn: 0 });
                this.start();
                return;
            }
            const reason = (code === 1008 && refusal) || closeReason;
            // The token of an open connection expired or was revoked: a new one
            // may be let in. At once the first time; if the next connection
            // ends so too within 10 s, with backoff. A refused connect (the
            // refusal text came first) stops below: a getToken that has only
            // the old token costs one attempt, not a loop.
            if (code === 1008 && !refusal && this.options.getToken && NEW_TOKEN_REASONS.includes(closeReason)) {
                this.nextToken = "";
                if (this.renewedAtOnce) {
                    this.again(code, reason);
                    return;
                }
                this.renewedAtOnce = true;
                this.report({ state: "reconnecting", code, reason, retryIn: 0 });
                this.start();
                return;
            }
            if (!RETRY_CODES.includes(code)) {
                this.stopped = true;
                this.report({ state: "closed", code, reason });
                return;
            }
            this.again(code, reason);
        };
        ws.onclose = (event) => ended(event.code, event.reason);
        // Browsers follow an error with a close event, but Node 20's WebSocket
        // (undici before nodejs/undici#3566) fires none when the handshake
        // fails (a 503 while the server drains, say): an error before open
        // is the end of that attempt. After open, the close event tells more.
        ws.onerror = () => {
            if (!opened)
                ended(1006, "");
        };
        // Reported once the handlers are in place: whatever onState does
        // (throw, stop the client), the socket is handled.
        this.report({ state: "connecting" });
    }
    // again schedules the next attempt after a close that a retry can cure.
    again(code, reason) {
        const retryIn = this.delay / 2 + (Math.random() * this.delay) / 2;
        this.delay = Math.min(this.delay * 2, maxDelay);
        this.retryTimer = setTimeout(() => this.start(), retryIn);
        this.report({ state: "reconnecting", code, reason, retryIn });
    }
    // plan schedules the refresh of token, got at got, that expires at exp
    // (seconds since the epoch; undefined: never). A fixed token cannot be
    // refreshed.
    plan(token, got, exp) {
        clearTimeout(this.renewTimer);
        if (!this.options.getToken)
            return;
        const wait = refreshIn(token, got, exp);
        if (!Number.isFinite(wait))
            return;
        // setTimeout fires at once when given more than 2^31-1 ms (24.8 days).
        this.renewTimer = setTimeout(() => void this.refresh(), Math.min(Math.max(wait, 0), maxTimeout));
    }
    // refresh asks getToken for a newer token and sends it in band. plan
    // calls it only when there is a getToken.
    async refresh() {
        const ws = this.ws;
        let token;
        try {
            token = await this.options.getToken();
        }
        catch {
            if (ws && ws === this.ws)
                this.renewTimer = setTimeout(() => void this.refresh(), refusedRefreshRetry);
            return;
        }
        const got = now();
        if (!ws || ws !== this.ws || ws.readyState !== OPEN)
            return;
        // The same token again (an app whose cache has not renewed yet) would
        // be accepted and answered at once, again and again until exp.
        if (expiry(token) <= expiry(this.current)) {
            this.renewTimer = setTimeout(() => void this.refresh(), refusedRefreshRetry);
            return;
        }
        this.pending = token;
        this.pendingGot = got;
        ws.send(JSON.stringify({ refresh: token }));
        // No answer: a server without in-band refresh, or one slow to check
        // the token. Reconnect with the new token before the old one expires,
        // resuming after the last offset. (A connection still open past exp
        // is on a server that does not enforce exp: then there is no hurry.)
        const left = timeLeft(this.current, this.currentGot);
        const wait = left > 0 ? Math.min(refreshAnswerWait, left / 2) : refreshAnswerWait;
        this.answerTimer = setTimeout(() => {
            if (ws !== this.ws)
                return;
            this.pending = ""; // an answer after this is too late: ignored
            this.nextToken = token;
            this.nextGot = got;
            this.replacing = true;
            ws.close(1000, "token refresh");
        }, wait);
    }
    // answered handles {"refreshed": true, "exp": ...} or {"refreshed":
    // false, "error": ...}, the answer to the refresh outstanding. With none
    // outstanding (an answer after the wait, or one never asked for) there
    // is nothing to answer: it is ignored.
    answered(frame) {
        if (!this.pending)
            return;
        clearTimeout(this.answerTimer);
        const token = this.pending;
        const got = this.pendingGot;
        this.pending = "";
        if (frame.refreshed !== true) {
            // The old exp stands: try again later.
            this.renewTimer = setTimeout(() => void this.refresh(), refusedRefreshRetry);
            return;
        }
        this.current = token;
        this.currentGot = got;
        this.plan(token, got, typeof frame.exp === "number" ? frame.exp : undefined);
    }
}
// rethrow throws err on its own, out of the client's step: to
// reportError where there is one (browsers: the console and the window's
// error event, as an uncaught error), else from a microtask (Node: an
// uncaught exception, which ends the process unless something handles
// it, as any error thrown from an event handler would).
function rethrow(err) {
    const report = globalThis.reportError;
    if (typeof report === "function") {
        report(err);
        return;
    }
    queueMicrotask(() => {
        throw err;
    });
}
// now is a clock for durations, in ms: a change of the system clock does
// not move it, where there is one (performance.now).
function now() {
    const perf = globalThis.performance;
    return perf ? perf.now() : Date.now();
}
// refreshIn is the ms from now until the refresh of token, which the
// client got at got (now()), with exp its expiry (seconds since the epoch;
// the server's answer to a refresh, else the token's): three quarters of
// its lifetime after got when it has iat (see lifetime), else three
// quarters of the time left before exp by this clock. NaN: no refresh (no
// exp, or by this clock exp has passed, without iat).
function refreshIn(token, got, exp) {
    if (exp === undefined)
        return NaN;
    const life = lifetime(claims(token).iat, exp);
    if (life !== undefined)
        return (life * 3) / 4 - (now() - got);
    const left = exp * 1000 - Date.now();
    return left > 0 ? (left * 3) / 4 : NaN;
}
// timeLeft is the ms token, got at got, has left: from its lifetime when
// it has iat, else by this clock. Infinity without exp.
function timeLeft(token, got) {
    const { exp, iat } = claims(token);
    if (exp === undefined)
        return Infinity;
    const life = lifetime(iat, exp);
    return life !== undefined ? life - (now() - got) : exp * 1000 - Date.now();
}
// lifetime is how long a token lasts, in ms, by its own claims: exp - iat,
// both from the issuer's clock, so a client clock off by any amount does
// not change it. An iat in whole seconds may have been rounded down by up
// to a second, so that second is taken off: the life counted is never
// longer than the real one. Undefined without iat or with exp <= iat.
function lifetime(iat, exp) {
    if (iat === undefined || !(exp > iat))
        return undefined;
    const life = (exp - iat) * 1000 - (Number.isInteger(iat) ? 1000 : 0);
    return Math.max(life, 0);
}
function parseFrame(data) {
    try {
        const v = JSON.parse(data);
        return v !== null && typeof v === "object" && !Array.isArray(v) ? v : undefined;
    }
    catch {
        return undefined;
    }
}
// claims are a JWT's exp and iat (seconds since the epoch), each
// undefined when it has none or cannot be read (then the server is the
// judge). The payload is not verified: the client only uses it to time
// the refresh.
function claims(token) {
    try {
        const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
        // atob decodes to Latin-1; a number in the JSON reads the same.
        const { exp, iat } = JSON.parse(atob(payload));
        return { exp: finite(exp), iat: finite(iat) };
    }
    catch {
        return {};
    }
}
function finite(v) {
    return typeof v === "number" && Number.isFinite(v) ? v : undefined;
}
// expiry is a JWT's exp in seconds since the epoch, or Infinity without
// one: to compare two tokens of the same issuer.
function expiry(token) {
    return claims(token).exp ?? Infinity;
}
