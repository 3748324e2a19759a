// The console page. It listens with the client library of clients/js,
// which the server serves beside this file.
import { connectPusher } from "./pusher.js";

// Messages and answers are untrusted: they are shown with textContent
// only, never parsed as HTML.
(() => {
  const $ = (id) => document.getElementById(id);
  const maxMessages = 500; // older ones are dropped, so a busy uid cannot eat the tab's memory
  const closeNames = { 1000: "normal", 1001: "going away", 1006: "connection lost", 1008: "policy violation", 1009: "message too big", 1012: "service restart", 1013: "try again later" };
  let client = null; // the connection of the last Connect, until it is closed
  let generation = 0; // callbacks of a connection the user replaced are ignored
  let attempts = 0; // connection attempts since the user pressed Connect
  // The uid of the last Connect and the offset of its latest message:
  // Connect as the same uid again resumes after it.
  let lastUID = "";
  let lastOffset = "";

  // Secrets in the fragment (make run's link: #token=...&key=...) fill the
  // form and leave the address bar, the history and any screen share.
  const fragment = new URLSearchParams(location.hash.slice(1));
  if (fragment.has("token") || fragment.has("key")) {
    $("token").value = fragment.get("token") || "";
    $("key").value = fragment.get("key") || "";
    history.replaceState(null, "", location.pathname + location.search);
  }

  // wsURL is /ws on this page's server, ws: or wss: as the page is http: or https:.
  function wsURL() {
    const u = new URL("ws", location.href);
    u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
    u.search = "";
    u.hash = "";
    return u.href;
  }

  // tokenUID reads the uid claim to fill the send panel; the server, not
  // this page, checks the token.
  function tokenUID(token) {
    try {
      const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      const json = new TextDecoder().decode(Uint8Array.from(atob(payload), (c) => c.charCodeAt(0)));
      const uid = JSON.parse(json).uid;
      return typeof uid === "string" ? uid : "";
    } catch {
      return "";
    }
  }

  function clock(d) {
    const p = (n, w) => String(n).padStart(w, "0");
    return `${p(d.getHours(), 2)}:${p(d.getMinutes(), 2)}:${p(d.getSeconds(), 2)}.${p(d.getMilliseconds(), 3)}`;
  }

  // addItem puts a line of class cls at the top of the message list: the
  // time it arrived, then a span of class textClass with text.
  function addItem(cls, textClass, text) {
    const now = new Date();
    const li = document.createElement("li");
    li.className = cls;
    const time = document.createElement("time");
    time.dateTime = now.toISOString();
    time.textContent = clock(now);
    const body = document.createElement("span");
    body.className = textClass;
    body.textContent = text;
    li.append(time, body);
    const list = $("messages");
    list.prepend(li);
    while (list.children.length > maxMessages) list.lastElementChild.remove();
    $("count").textContent = `(${list.querySelectorAll("li.message").length})`;
    return li;
  }

  // showMessage shows a message with its offset's count (#n; the whole
  // offset in the tooltip); replayed ones came late, after a reconnect.
  function showMessage(text, offset, replayed) {
    const li = addItem(replayed ? "message replayed" : "message", "text", text);
    const off = document.createElement("span");
    off.className = "offset";
    off.textContent = "#" + offset.slice(offset.indexOf(":") + 1);
    off.title = replayed ? `offset ${offset}, recovered after a reconnect` : `offset ${offset}`;
    li.append(off);
  }

  // showRecovered notes in the list what a reconnect got back.
  function showRecovered(ok, n) {
    const li = addItem("status", "note", ok
      ? `Reconnected: recovered ${n} message${n === 1 ? "" : "s"}.`
      : "Reconnected, but could not recover the messages sent meanwhile: some may be missing. An app would reload its data now.");
    li.dataset.recovered = ok;
  }

  // closedText names a close; code is missing when the browser refused
  // to open the WebSocket at all.
  function closedText(code, reason) {
    if (code === undefined) return `closed${reason ? ": " + reason : ""}`;
    const name = closeNames[code] ? ` ${closeNames[code]}` : "";
    return `closed: ${code}${name}${reason ? ": " + reason : ""}`;
  }

  function showState({ state, code, reason, retryIn }) {
    const el = $("state");
    if (state === "connecting") attempts++;
    el.dataset.state = state;
    el.dataset.attempts = attempts;
    if (state !== "connecting") el.dataset.code = code || ""; // the last close, while reconnecting
    switch (state) {
      case "connecting":
        el.textContent = attempts > 1 ? `Reconnecting (attempt ${attempts})…` : "Connecting…";
        break;
      case "open":
        el.textContent = `Open: listening as ${tokenUID($("token").value) || "this token's uid"}.`;
        break;
      case "reconnecting":
        el.textContent = `${closedText(code, reason)}. Reconnecting in ${(retryIn / 1000).toFixed(1)} s…`;
        break;
      default:
        el.textContent = code === 1008 ? `${closedText(code, reason)}. Not reconnecting: paste a valid token and connect.` : `${closedText(code, reason)}.`;
    }
    const live = state !== "closed";
    $("connect").disabled = live;
    $("disconnect").disabled = !live;
    if (!live) client = null;
  }

  $("listen-form").addEventListener("submit", (e) => {
    e.preventDefault();
    if (client) client.stop();
    const token = $("token").value.trim();
    const uid = tokenUID(token);
    attempts = 0;
    if (!$("uid").value) $("uid").value = uid;
    // Another user starts over; the same one (a new token after 1008, or
    // Connect after Disconnect) asks for what it missed.
    if (!uid || uid !== lastUID) lastOffset = "";
    lastUID = uid;
    const gen = ++generation;
    const current = (f) => (...args) => { if (gen === generation) f(...args); };
    const onMessage = (text, offset, replayed) => { lastOffset = offset; showMessage(text, offset, replayed); };
    // Refreshes send what the token field holds then: paste a newer token
    // of the same uid there and the connection outlives the first.
    const getToken = () => $("token").value.trim() || token;
    client = connectPusher({
      url: wsURL(),
      getToken,
      onMessage: current(onMessage),
      onState: current(showState),
      onRecovered: current(showRecovered),
      since: lastOffset,
    });
  });
  $("disconnect").addEventListener("click", () => { if (client) client.stop(); });
  $("clear").addEventListener("click", () => {
    $("messages").replaceChildren();
    $("count").textContent = "(0)";
  });

  // batchLines reads the message box for /send/batch: one message a
  // line, blank lines skipped (the server refuses an empty message, and a
  // blank line in a paste is never meant as one).
  function batchLines(text) {
    return text.split("\n").filter((line) => line.trim() !== "");
  }

  // shorten cuts text to max characters (code points, so an emoji is not
  // split), ending in an ellipsis.
  function shorten(text, max = 60) {
    const chars = Array.from(text);
    return chars.length <= max ? text : chars.slice(0, max - 1).join("") + "…";
  }

  // resultText is one /send/batch result: the id of a message sent, with
  // who got it for a multicast, or the status and reason it was not sent.
  function resultText(r) {
    if (r.status) return `${r.status} ${r.error}`;
    let text = `id ${r.id}`;
    if (r.sent) text += `; sent: ${r.sent.join(", ") || "none"}; not_found: ${r.not_found.join(", ") || "none"}`;
    return r.replayed ? text + " (replayed)" : text;
  }

  // showAnswer shows the answer to the whole request (or its failure).
  function showAnswer(status, cls, text) {
    const out = $("send-result");
    out.dataset.status = status;
    out.className = cls;
    out.textContent = text;
  }

  // answerText explains a one-line answer of /send or /send/batch.
  function answerText(path, res, body) {
    let text = `${res.status} ${res.statusText}\n${body}`;
    if (res.status === 404 && !body.startsWith("client not found")) {
      text += `\n\n/${path} is not served on this address: the server runs with -internal-addr, so /${path} is only on the internal listener. Send from a backend that reaches it.`;
    } else if (res.status === 404) {
      text += "\n\nNobody with this uid is connected to this server.";
    }
    return text;
  }

  // showBatch lists each line of a batch with its result, in order.
  function showBatch(res, lines, results) {
    const list = $("batch-results");
    let sent = 0;
    results.forEach((r, i) => {
      const li = document.createElement("li");
      li.className = (r.status ? "error" : "ok") + (r.replayed ? " replayed" : "");
      li.dataset.status = r.status || res.status;
      const line = document.createElement("span");
      line.className = "line";
      line.textContent = shorten(lines[i] ?? "");
      line.title = lines[i] ?? "";
      const result = document.createElement("span");
      result.className = "result";
      result.textContent = resultText(r);
      li.append(line, result);
      list.append(li);
      if (!r.status) sent++;
    });
    const failed = results.length - sent;
    showAnswer(res.status, failed ? "error" : "ok", `${res.status} ${res.statusText}\n${results.length} line${results.length === 1 ? "" : "s"}: ${sent} sent, ${failed} not sent.`);
  }

  $("batch").addEventListener("change", () => {
    const batch = $("batch").checked;
    document.querySelector('label[for="message"]').textContent = batch ? "Messages, one per line" : "Message";
    $("send").textContent = batch ? "Send batch" : "Send";
  });

  // showPresence asks POST /online whether the uid of the send panel has
  // a connection, and says so under it.
  async function showPresence() {
    const uid = $("uid").value.trim(), key = $("key").value.trim();
    const shown = $("presence");
    if (!uid || !key) return void (shown.textContent = shown.dataset.online = "");
    try {
      const res = await fetch("online", {
        method: "POST",
        headers: { "Authorization": "Bearer " + key, "Content-Type": "application/json" },
        body: JSON.stringify({ uids: [uid] }),
        cache: "no-store",
      });
      if (!res.ok) throw new Error(res.status);
      const online = (await res.json()).online.includes(uid);
      if ($("uid").value.trim() !== uid) return; // the field changed meanwhile
      shown.dataset.online = String(online);
      shown.textContent = uid + (online ? " is online" : " is offline");
    } catch {
      shown.textContent = shown.dataset.online = "";
    }
  }
  $("uid").addEventListener("change", showPresence);
  $("key").addEventListener("change", showPresence);

  $("send-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const batch = $("batch").checked;
    const uid = $("uid").value;
    const lines = batch ? batchLines($("message").value) : [];
    $("batch-results").replaceChildren();
    if (batch && lines.length === 0) return showAnswer("", "error", "Nothing to send: every line is blank.");
    const path = batch ? "send/batch" : "send";
    const body = batch ? { messages: lines.map((message) => ({ uid, message })) } : { uid, message: $("message").value };
    showAnswer("", "", "Sending…");
    $("send").disabled = true;
    try {
      const res = await fetch(path, {
        method: "POST",
        headers: { "Authorization": "Bearer " + $("key").value.trim(), "Content-Type": "application/json" },
        body: JSON.stringify(body),
        cache: "no-store",
      });
      const text = (await res.text()).trim();
      if (batch && res.ok) showBatch(res, lines, JSON.parse(text).results);
      else showAnswer(res.status, res.ok ? "ok" : "error", answerText(path, res, text));
    } catch (err) {
      showAnswer("error", "error", `Request failed: ${err.message}`);
    } finally {
      $("send").disabled = false;
      showPresence();
    }
  });

  // make run's link carries a token: listen at once.
  if ($("token").value) $("listen-form").requestSubmit();
})();
