// go-pusher-client: listens on a go-pusher /ws endpoint, in browsers and in
// Node. It connects with format=json, reconnects with backoff after the
// closes that a retry can cure, asks for what it missed (since=), and keeps
// one connection open across token expiries by refreshing the token in band.
// No dependencies: it needs a WebSocket, the global one or one passed in.
/** Close codes after which the client reconnects: going away, connection lost, missed messages, slow consumer. */
export const RETRY_CODES = [1001, 1006, 1012, 1013];
const OPEN = 1; // WebSocket.OPEN, the same in every implementation
const firstDelay = 500; // ms; the backoff doubles from here...
const maxDelay = 30000; // ...up to here
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
 * most one WebSocket at a time. After a close with a
 * code in RETRY_CODES it reconnects in 0.5 s doubling to 30 s (each wait
 * randomised between half and all of it, so that clients dropped together
 * do not come back together), with since= the last offset it saw. After
 * 1008 (bad or expired token, connection limit, disconnected by the
 * server) and any other code it stops: state "closed".
 */
export class PusherClient {
    constructor(options) {
        this.current = ""; // the token of ws
        this.pending = ""; // a token sent in band, not answered yet
        this.nextToken = ""; // a token for the next connect, instead of asking getToken
        this.delay = firstDelay;
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
        void this.open();
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
        this.options.onState?.(change);
    }
    clearTimers() {
        clearTimeout(this.renewTimer);
        clearTimeout(this.answerTimer);
    }
    // token is the token for a connect: the one a refresh could not send
    // in band, else getToken's, else the fixed one.
    async token() {
        if (this.nextToken) {
            const t = this.nextToken;
            this.nextToken = "";
            return t;
        }
        return this.options.getToken ? await this.options.getToken() : this.options.token;
    }
    async open() {
        let token;
        try {
            token = await this.token();
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
        this.report({ state: "connecting" });
        let refusal = ""; // the "authenticate error: ..." text before a 1008
        let replaying = this.since !== ""; // messages before {"recovered": ...} are replayed
        let missed = 0;
        let opened = false;
        ws.onopen = () => {
            if (ws !== this.ws)
                return;
            opened = true;
            this.delay = firstDelay;
            this.plan(expiry(token));
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
                this.options.onMessage?.(frame.message, frame.offset, replaying);
            }
            else if (frame && "refreshed" in frame) {
                this.answered(frame);
            }
            else if (frame && "recovered" in frame) {
                replaying = false;
                this.options.onRecovered?.(frame.recovered === true, missed);
            }
            else {
                // A server without format=json (the article's) sends the message alone.
                this.options.onMessage?.(event.data, "", false);
            }
        };
        const ended = (code, closeReason) => {
            if (ws !== this.ws)
                return;
            this.ws = undefined;
            this.clearTimers();
            if (this.replacing) {
                this.replacing = false;
                this.report({ state: "reconnecting", code, reason: "reconnecting with a new token", retryIn: 0 });
                void this.open();
                return;
            }
            const reason = (code === 1008 && refusal) || closeReason;
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
    }
    // again schedules the next attempt after a close that a retry can cure.
    again(code, reason) {
        const retryIn = this.delay / 2 + (Math.random() * this.delay) / 2;
        this.delay = Math.min(this.delay * 2, maxDelay);
        this.retryTimer = setTimeout(() => void this.open(), retryIn);
        this.report({ state: "reconnecting", code, reason, retryIn });
    }
    // plan schedules a refresh when three quarters of the time left before
    // exp (ms since the epoch) are gone. A fixed token cannot be refreshed.
    plan(exp) {
        clearTimeout(this.renewTimer);
        const left = exp - Date.now();
        if (!this.options.getToken || !Number.isFinite(left) || left <= 0)
            return;
        // setTimeout fires at once when given more than 2^31-1 ms (24.8 days).
        this.renewTimer = setTimeout(() => void this.refresh(), Math.min((left * 3) / 4, maxTimeout));
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
        if (!ws || ws !== this.ws || ws.readyState !== OPEN)
            return;
        const exp = expiry(this.current);
        // The same token again (an app whose cache has not renewed yet) would
        // be accepted and answered at once, again and again until exp.
        if (expiry(token) <= exp) {
            this.renewTimer = setTimeout(() => void this.refresh(), refusedRefreshRetry);
            return;
        }
        this.pending = token;
        ws.send(JSON.stringify({ refresh: token }));
        // No answer: a server without in-band refresh. Reconnect with the new
        // token before the old one expires, resuming after the last offset.
        // (A connection still open past exp is on a server that does not
        // enforce exp: then there is no hurry.)
        const left = exp - Date.now();
        const wait = left > 0 ? Math.min(refreshAnswerWait, left / 2) : refreshAnswerWait;
        this.answerTimer = setTimeout(() => {
            if (ws !== this.ws)
                return;
            this.nextToken = token;
            this.replacing = true;
            ws.close(1000, "token refresh");
        }, wait);
    }
    // answered handles {"refreshed": true, "exp": ...} or {"refreshed": false, "error": ...}.
    answered(frame) {
        clearTimeout(this.answerTimer);
        if (frame.refreshed !== true) {
            // The old exp stands: try again later.
            this.renewTimer = setTimeout(() => void this.refresh(), refusedRefreshRetry);
            return;
        }
        this.current = this.pending;
        this.plan(typeof frame.exp === "number" ? frame.exp * 1000 : Infinity);
    }
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
// expiry is a JWT's exp in ms since the epoch, or Infinity when it has
// none or cannot be read (then the server is the judge). The payload is
// not verified: the client only uses it to time the refresh.
function expiry(token) {
    try {
        const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
        // atob decodes to Latin-1; a number in the JSON reads the same.
        const exp = JSON.parse(atob(payload)).exp;
        return typeof exp === "number" ? exp * 1000 : Infinity;
    }
    catch {
        return Infinity;
    }
}
