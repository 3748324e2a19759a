/** The states a client goes through, reported to `onState`. */
export type State = "connecting" | "open" | "reconnecting" | "closed";
/** StateChange is one report to `onState`. */
export interface StateChange {
    state: State;
    /** The close code that led here ("reconnecting" and "closed"). */
    code?: number;
    /**
     * The close reason. After a refused connection (1008 before it was
     * registered) it is the server's `authenticate error: <reason>` text.
     */
    reason?: string;
    /** Milliseconds until the next attempt ("reconnecting"). */
    retryIn?: number;
}
/** TokenSource returns a JWT for /ws, or a promise of one. */
export type TokenSource = () => string | Promise<string>;
/**
 * WebSocketLike is the part of the WebSocket API that the client uses: the
 * browser's, Node's global one (Node 22, or 20 with --experimental-websocket)
 * and the `ws` package's all have it. The event parameters are `any` so
 * that each of their own event types fits.
 */
export interface WebSocketLike {
    readonly readyState: number;
    onopen: ((event: any) => void) | null;
    onmessage: ((event: any) => void) | null;
    onclose: ((event: any) => void) | null;
    onerror: ((event: any) => void) | null;
    send(data: string): void;
    close(code?: number, reason?: string): void;
}
/** WebSocketConstructor makes a WebSocketLike for a URL. */
export type WebSocketConstructor = new (url: string) => WebSocketLike;
/** BaseOptions are the options other than the token. */
export interface BaseOptions {
    /** The /ws URL, ws: or wss:, for example `wss://push.example.com/ws`. */
    url: string | URL;
    /** Gets each pushed message with its offset; replayed is true for one sent again after a reconnect. */
    onMessage?: (message: string, offset: string, replayed: boolean) => void;
    /** Gets each change of state. */
    onState?: (change: StateChange) => void;
    /**
     * After each connect with since=: complete is true when the server sent
     * everything after that offset (missed messages, which came before this
     * call with replayed true), false when it no longer had it all: some
     * messages may be lost, so resynchronise by other means.
     */
    onRecovered?: (complete: boolean, missed: number) => void;
    /** Start after this offset, as after a reconnect (for example one kept in sessionStorage). */
    since?: string;
    /** The WebSocket class to use; default `globalThis.WebSocket`. */
    WebSocket?: WebSocketConstructor;
}
/**
 * PusherOptions configures a client: a fixed `token`, or a `getToken`
 * callback, asked at each connect and before each token's `exp`.
 */
export type PusherOptions = BaseOptions & ({
    token: string;
    getToken?: never;
} | {
    getToken: TokenSource;
    token?: never;
});
/**
 * Close codes after which the client reconnects with backoff: going away,
 * connection lost, missed messages, slow consumer. (With `getToken`, a
 * 1008 "token expired" or "token revoked" also leads to a reconnect, with
 * a new token: see PusherClient.)
 */
export declare const RETRY_CODES: readonly number[];
/** connectPusher starts a client and returns it; call `stop()` to end it. */
export declare function connectPusher(options: PusherOptions): PusherClient;
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
export declare class PusherClient {
    private readonly options;
    private readonly WebSocketClass;
    private readonly url;
    private ws;
    private current;
    private currentGot;
    private pending;
    private pendingGot;
    private nextToken;
    private nextGot;
    private since;
    private delay;
    private renewedAtOnce;
    private stopped;
    private replacing;
    private retryTimer;
    private renewTimer;
    private answerTimer;
    private stableTimer;
    private currentState;
    constructor(options: PusherOptions);
    /** The current state. */
    get state(): State;
    /** The offset of the last message received ("" before the first): a later client may start after it. */
    get offset(): string;
    /**
     * stop closes the connection with 1000 and reconnects no more. It reports
     * "closed" at once, and no callback is called after it.
     */
    stop(): void;
    /** close is stop, for code that expects the WebSocket's name. */
    close(): void;
    private report;
    private call;
    private clearTimers;
    private start;
    private token;
    private open;
    private again;
    private plan;
    private refresh;
    private answered;
}
