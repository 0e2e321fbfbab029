// The room's session with the server, without the page: one websocket that
// reconnects by itself with backoff and resyncs with ?since=<last id>, the
// pages of a join, a resync and "load older", and an outbox: every message
// the user sends carries a client_id and stays pending until the server
// acknowledges it, so nothing typed is lost to a dead socket, a restart or a
// reload. It tells the page what to show through the `view` it is given
// (room.js); it touches no element and holds no text for people.
// The protocol (frames, acks, page ends) is described in the README.

const RETRY_BASE_MS = 500;
const RETRY_MAX_MS = 15000;
// Backoff starts again from the bottom only after a connection has stayed
// open this long: a server that accepts and then drops every connection (its
// database down, say) is not hammered every half second.
const STABLE_AFTER_MS = 10000;
// Ids kept to drop a message that arrives twice. Messages come in id order,
// so only ids near the cursor can come again; the oldest are forgotten.
const SEEN_MAX = 5000;
// Resending a message the server could not take yet (store_failed, or the
// rate limit during a catch-up resend): first after this, doubling to the cap.
const RESEND_BASE_MS = 1000;
const RESEND_MAX_MS = 30000;
// Refusals after which the server says to send the same message again later.
// Every other refusal of a message gives it back to the user.
const RETRY_LATER = new Set(["store_failed", "broadcast_failed"]);
// The close code of a connection whose room this user may no longer enter.
export const NO_ACCESS = 4403;
// A message sent before a reconnect (or a reload) may have been stored with
// its ack lost: the new connection's resync then brings it before the
// resend's ack says which pending item it is. So after a reconnect, incoming
// messages wait until every such resend is answered (or ANSWER_WAIT_MS),
// and no message shows twice, not even for a moment.
const ANSWER_WAIT_MS = 5000;

// crypto.randomUUID exists only in secure contexts (https, localhost,
// 127.0.0.1); a plain-http LAN address has crypto.getRandomValues only.
export function newClientId() {
  if (typeof crypto.randomUUID === "function") return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6] & 0x0f) | 0x40; // version 4
  bytes[8] = (bytes[8] & 0x3f) | 0x80; // RFC 4122 variant
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

// Exponential backoff with jitter, so that every client of a restarted server
// does not come back in the same instant.
function backoff(base, max, attempt) {
  const ceiling = Math.min(max, base * 2 ** (attempt - 1));
  return ceiling / 2 + Math.random() * (ceiling / 2);
}

// What the view is told (every method optional):
//   status(state)            "connecting", "connected", "reconnecting", "offline" or "closed" (4403)
//   message(message)         a message not shown yet, after every one shown so far
//   older(messages)          a "load older" page not shown yet, oldest first, all older than anything shown
//   olderAvailable(more)     whether to offer "load older" (a request ended, or the join said)
//   acked(entry, id)         the server has the message: id when the message itself has not come yet, else null
//   note(entry, kind, info)  an outbox entry is "sending", "waiting" (for a connection) or "retrying"
//                            ({code, seconds}: the refusal it waits out)
//   givenBack(entry, frame)  the server refused the message for good (frame: the error)
//   error(frame)             an error frame for the user to read (no message of the outbox is given back)
//   deleted(id), restricted(frame), presence(frame)   those frames
//   presenceStale()          the connection dropped: who was here, until the next one says
//   noAccess()               closed with 4403: this user may no longer be in the room; nothing reconnects
export class ChatSession {
  // endpoint: the room's websocket URL without its query; storage: where the
  // outbox outlives a reload (sessionStorage: this tab only); isOnline: what
  // the browser says of the network.
  constructor({ room, endpoint, storage, isOnline = () => true, view }) {
    this.endpoint = endpoint;
    this.storage = storage;
    this.storageKey = `chat.outbox.${room}`;
    this.isOnline = isOnline;
    this.view = view;
    this.state = null;
    this.seen = new Set();
    this.lastId = 0; // the cursor: the highest message id shown
    // Whether the room's backlog has arrived once: from then on every
    // reconnect asks for what came after the cursor, ?since=0 included (a
    // room that was empty at join), so nothing said since is taken for
    // history. The session joins with ?pages=1, so the server ends the
    // backlog with a page frame however small the room: until that frame has
    // come, a connection that drops joins afresh rather than page through
    // the room from its first message.
    this.joined = false;
    this.lowestId = null; // the oldest message shown, for "load older"
    this.socket = null;
    this.generation = 0; // counts connections, so each knows what it has sent
    this.attempts = 0;
    this.retryTimer = null;
    this.stableTimer = null;
    this.resendTimer = null;
    this.loadingOlder = false;
    this.olderBatch = [];
    this.awaiting = null; // client ids whose answer holds incoming frames back
    this.heldFrames = [];
    this.answerTimer = null;
    // The outbox: messages sent but not yet acknowledged, oldest first. Each:
    // {clientId, message, user, ts} (what is saved) plus what this page load
    // knows: sentOn (the connection generation it was last sent on), retryAt
    // and retries (resending later), maybeStored (sent at least once, or left
    // by an earlier load) and fresh (sent the moment it was typed, on an open
    // socket). Whatever an earlier load of this tab left may have been stored,
    // its ack lost with the page.
    this.outbox = this.loadOutbox();
    for (const entry of this.outbox) entry.maybeStored = true;
  }

  tell(event, ...args) {
    if (typeof this.view[event] === "function") this.view[event](...args);
  }

  setStatus(state) {
    this.state = state;
    this.tell("status", state);
  }

  isOpen() {
    return this.socket !== null && this.socket.readyState === WebSocket.OPEN;
  }

  // The badge follows the socket: an open socket is "connected" whatever the
  // browser's online events said in between.
  statusFromSocket() {
    if (this.isOpen()) this.setStatus("connected");
    else if (!this.isOnline()) this.setStatus("offline");
    else this.setStatus(this.attempts ? "reconnecting" : "connecting");
  }

  // A frame of the page's own (a deletion, a mute): false when there is no
  // connection to send it on.
  send(frame) {
    if (!this.isOpen()) return false;
    this.socket.send(JSON.stringify(frame));
    return true;
  }

  // ---- the outbox ----------------------------------------------------------

  loadOutbox() {
    try {
      const saved = JSON.parse(this.storage.getItem(this.storageKey) || "[]");
      return Array.isArray(saved) ? saved.filter((e) => e && typeof e.clientId === "string") : [];
    } catch {
      return [];
    }
  }

  saveOutbox() {
    const kept = this.outbox.map(({ clientId, message, user, ts }) => ({ clientId, message, user, ts }));
    try {
      if (kept.length) this.storage.setItem(this.storageKey, JSON.stringify(kept));
      else this.storage.removeItem(this.storageKey);
    } catch {
      // Storage full or refused: the outbox still lives as long as the page.
    }
  }

  find(clientId) {
    return this.outbox.find((entry) => entry.clientId === clientId);
  }

  drop(entry) {
    const index = this.outbox.indexOf(entry);
    if (index >= 0) this.outbox.splice(index, 1);
    this.saveOutbox();
  }

  // A message the user typed: into the outbox, and out at once if it can go.
  post(message, user) {
    const entry = { clientId: newClientId(), message, user, ts: new Date().toISOString() };
    const waiting = this.outbox.some((e) => e.sentOn !== this.generation);
    entry.fresh = this.isOpen() && !waiting;
    this.outbox.push(entry);
    this.saveOutbox();
    this.pump();
    return entry;
  }

  sendEntry(entry) {
    const frame = { message: entry.message, client_id: entry.clientId };
    if (entry.user) frame.user = entry.user;
    this.socket.send(JSON.stringify(frame));
    entry.sentOn = this.generation;
    entry.maybeStored = true;
  }

  // Sends what the outbox holds and this connection has not sent yet, in
  // order. One waiting to be retried holds back those after it, so the room
  // sees them in the order they were typed.
  pump() {
    clearTimeout(this.resendTimer);
    if (!this.isOpen()) return;
    const now = Date.now();
    for (const entry of this.outbox) {
      if (entry.retryAt && entry.retryAt > now) {
        this.resendTimer = setTimeout(() => this.pump(), entry.retryAt - now);
        return;
      }
      if (entry.sentOn !== this.generation) {
        entry.retryAt = 0;
        this.sendEntry(entry);
      }
    }
  }

  resendLater(entry, code) {
    entry.retries = (entry.retries || 0) + 1;
    const delay = backoff(RESEND_BASE_MS, RESEND_MAX_MS, entry.retries);
    entry.retryAt = Date.now() + delay;
    entry.sentOn = null;
    this.tell("note", entry, "retrying", { code, seconds: Math.ceil(delay / 1000) });
    this.pump();
  }

  onAck(frame) {
    const entry = this.find(frame.ack);
    if (!entry) return; // acknowledged already (a resend's second ack)
    this.drop(entry);
    // Until the message itself comes (or with a resync), the view shows the
    // entry for it. Its id is not the cursor's: messages before it may still
    // be on their way.
    const coming = typeof frame.id === "number" && !this.seen.has(frame.id);
    this.tell("acked", entry, coming ? frame.id : null);
  }

  onRefused(frame) {
    const entry = this.find(frame.client_id);
    if (!entry) {
      this.tell("error", frame);
    } else if (RETRY_LATER.has(frame.code)) {
      // store_failed: the database refused it, nothing was stored; the server
      // asks for it again later, so the outbox retries by itself, with
      // backoff, for as long as the page is open (a resend is stored once
      // however often it is sent). broadcast_failed: stored, not relayed; the
      // resend is acknowledged as a duplicate and the message comes by resync.
      this.tell("error", frame);
      this.resendLater(entry, frame.code);
    } else if (frame.code === "rate_limited" && !entry.fresh) {
      // A backlog resent after a reconnect can outrun the rate limit by
      // itself; the user did nothing wrong, so it goes out a little later.
      this.resendLater(entry, frame.code);
    } else {
      this.drop(entry);
      this.tell("givenBack", entry, frame);
    }
  }

  // ---- the log -------------------------------------------------------------

  remember(id) {
    this.seen.add(id);
    if (this.seen.size > SEEN_MAX) {
      // A Set iterates in insertion order: drop the ids remembered first.
      let excess = this.seen.size - SEEN_MAX;
      for (const old of this.seen) {
        if (excess-- <= 0) break;
        this.seen.delete(old);
      }
    }
  }

  show(message) {
    if (this.seen.has(message.id)) return;
    this.remember(message.id);
    this.lastId = Math.max(this.lastId, message.id);
    this.lowestId = this.lowestId === null ? message.id : Math.min(this.lowestId, message.id);
    this.tell("message", message);
  }

  // An "older" page, oldest first: what is not shown yet goes on top.
  showOlder(messages) {
    const fresh = messages.filter((m) => !this.seen.has(m.id));
    if (!fresh.length) return;
    for (const message of fresh) {
      this.remember(message.id);
      this.lowestId = this.lowestId === null ? message.id : Math.min(this.lowestId, message.id);
    }
    this.tell("older", fresh);
  }

  setOlderAvailable(more) {
    this.loadingOlder = false;
    this.tell("olderAvailable", more);
  }

  // Asks for the page before the oldest message shown: false when it cannot
  // (one is on its way, nothing is shown yet, or there is no connection).
  loadOlder() {
    if (this.loadingOlder || this.lowestId === null || !this.isOpen()) return false;
    this.loadingOlder = true;
    this.olderBatch = [];
    this.socket.send(JSON.stringify({ before: this.lowestId }));
    return true;
  }

  onPageEnd(frame) {
    if (frame.page === "history") {
      // (Unless the room had messages and none came: a history limit of 0.)
      if (this.lastId || !frame.more) this.joined = true;
      this.setOlderAvailable(Boolean(frame.more));
    } else if (frame.page === "older") {
      // The button's row first: hiding it after would move the view.
      this.setOlderAvailable(Boolean(frame.more));
      this.showOlder(this.olderBatch);
      this.olderBatch = [];
    } else if (frame.page === "resync" && frame.more) {
      // More missed messages wait on the server: ask for the next page.
      const since = typeof frame.last === "number" ? frame.last : this.lastId;
      this.send({ since });
    } else if (frame.page === "resync") {
      this.joined = true; // the room up to now, from the cursor
    }
  }

  // ---- frames --------------------------------------------------------------

  holdUntilAnswered() {
    const resent = this.outbox.filter((entry) => entry.maybeStored).map((entry) => entry.clientId);
    if (!resent.length) return;
    this.awaiting = new Set(resent);
    clearTimeout(this.answerTimer);
    this.answerTimer = setTimeout(() => this.releaseFrames(), ANSWER_WAIT_MS);
  }

  answered(clientId) {
    if (this.awaiting && this.awaiting.delete(clientId) && this.awaiting.size === 0) this.releaseFrames();
  }

  releaseFrames() {
    clearTimeout(this.answerTimer);
    this.awaiting = null;
    const frames = this.heldFrames;
    this.heldFrames = [];
    for (const frame of frames) this.onRoomFrame(frame);
  }

  onFrame(data) {
    if (data === null || typeof data !== "object") return;
    if (typeof data.ack === "string") {
      this.onAck(data);
      this.answered(data.ack);
    } else if (typeof data.error === "string") {
      if (typeof data.client_id === "string") {
        this.onRefused(data);
        this.answered(data.client_id);
      } else if (data.code === "page_rate_limited" && typeof data.since === "number") {
        // The next resync page, asked too fast (a long way behind): asked
        // again when the server says, on this connection (a new one resyncs
        // itself).
        const asked = this.socket;
        setTimeout(() => {
          if (asked === this.socket) this.send({ since: data.since });
        }, Math.max(Number(data.retry_after) || 1, 0.05) * 1000);
      } else {
        // A refusal of no message: a deletion, a mute, a request, the cursor.
        if (data.code === "page_rate_limited" && this.loadingOlder) this.setOlderAvailable(true); // asked again by hand
        this.tell("error", data);
      }
    } else if (this.awaiting) {
      this.heldFrames.push(data);
    } else {
      this.onRoomFrame(data);
    }
  }

  // A live message without "seq" comes from an app server of a release
  // before acks (during a rolling deploy): it will never acknowledge
  // anything, so the echo of a message this connection sent stands for the
  // ack, or the message would stay pending and be stored again at every
  // reconnect.
  ackByEcho(message) {
    if ("seq" in message || message.history || message.resync) return;
    const entry = this.outbox.find((e) => e.sentOn === this.generation && e.message === message.message);
    if (entry) this.onAck({ ack: entry.clientId, id: message.id });
  }

  onRoomFrame(data) {
    if (typeof data.page === "string") this.onPageEnd(data);
    else if (typeof data.deleted === "number") this.tell("deleted", data.deleted);
    else if (typeof data.restricted === "string") this.tell("restricted", data);
    else if (Array.isArray(data.presence)) this.tell("presence", data);
    else if (typeof data.id === "number") {
      this.ackByEcho(data);
      const older = this.loadingOlder && data.history && (this.lowestId === null || data.id < this.lowestId);
      if (older) this.olderBatch.push(data);
      else this.show(data);
    }
    // Anything else is a frame from a newer server: ignored.
  }

  // ---- the connection ------------------------------------------------------

  url() {
    // presence=1: the server tells this page who is here (a server before
    // presence ignores it and the list stays hidden).
    // pages=1: the backlog ends with a page frame, and this page asks for
    // every next page itself. (A server before it sends none after a small
    // backlog: the cursor of a message shown then decides, or a fresh join if
    // none was.)
    const query = new URLSearchParams({ presence: "1", pages: "1" });
    if (this.joined || this.lastId) query.set("since", this.lastId);
    return `${this.endpoint}?${query}`;
  }

  connect() {
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.generation += 1;
    const current = new WebSocket(this.url());
    this.socket = current;
    this.statusFromSocket();
    current.addEventListener("open", () => {
      this.setStatus("connected");
      clearTimeout(this.stableTimer);
      this.stableTimer = setTimeout(() => { this.attempts = 0; }, STABLE_AFTER_MS);
      for (const entry of this.outbox) {
        entry.retryAt = 0; // a new connection is a new chance for every one
        this.tell("note", entry, "sending");
      }
      this.holdUntilAnswered();
      this.pump();
    });
    current.addEventListener("message", (event) => {
      if (this.state !== "connected") this.statusFromSocket();
      let data;
      try {
        data = JSON.parse(event.data);
      } catch {
        return;
      }
      this.onFrame(data);
    });
    current.addEventListener("close", (event) => this.onClose(current, event));
  }

  onClose(closed, event) {
    if (this.socket !== closed) return;
    this.socket = null;
    this.tell("presenceStale");
    clearTimeout(this.stableTimer);
    clearTimeout(this.resendTimer);
    // Held messages were not shown, so the cursor has not passed them: the
    // next connection's resync brings them again.
    clearTimeout(this.answerTimer);
    this.awaiting = null;
    this.heldFrames = [];
    if (this.loadingOlder) this.setOlderAvailable(true); // the request died with the socket
    if (event.code === NO_ACCESS) {
      // The room was made private, or this account left its members:
      // reconnecting would only be refused.
      this.setStatus("closed");
      this.tell("noAccess");
      return;
    }
    for (const entry of this.outbox) this.tell("note", entry, "waiting");
    this.scheduleReconnect();
  }

  scheduleReconnect() {
    this.attempts += 1;
    const delay = backoff(RETRY_BASE_MS, RETRY_MAX_MS, this.attempts);
    this.statusFromSocket();
    this.retryTimer = setTimeout(() => this.connect(), delay);
  }

  // The browser's online and offline events.
  networkChanged(online) {
    if (!online) {
      this.setStatus("offline");
    } else if (this.socket) {
      this.statusFromSocket(); // the socket lived through the blip: say so
    } else if (this.retryTimer !== null) {
      this.connect(); // the network is back: no need to wait out the backoff
    }
  }
}
