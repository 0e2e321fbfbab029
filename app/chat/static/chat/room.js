// The room page. One websocket that reconnects by itself and resyncs with
// ?since=<last id>, and an outbox: every message the user sends carries a
// client_id and stays on the page, pending, until the server acknowledges
// it, so nothing typed is lost to a dead socket, a restart or a reload.
// The protocol (frames, acks, page ends) is described in the README.
"use strict";

const config = JSON.parse(document.getElementById("chat-config").textContent);
const log = document.getElementById("chat-log");
const olderRow = document.getElementById("chat-older");
const olderButton = document.getElementById("chat-load-older");
const form = document.getElementById("chat-form");
const messageInput = document.getElementById("chat-message-input");
const userInput = document.getElementById("chat-user-input");
const statusBadge = document.getElementById("status");
const errorBox = document.getElementById("chat-error");
const presenceBox = document.getElementById("presence");
const presenceList = document.getElementById("presence-list");
const announcer = document.getElementById("chat-announcer");

// Every text a person reads comes through Django's JavaScript catalog
// (/jsi18n/, loaded before this script), in the page's language.
const gettext = window.gettext || ((text) => text);
const ngettext = window.ngettext || ((singular, plural, count) => (count === 1 ? singular : plural));
const interpolate = window.interpolate || ((text, values) => text.replace(/%\(\w+\)s/g, (m) => values[m.slice(2, -2)]));
function format(text, values) {
  return interpolate(text, values, true);
}
// Dates and times in the page's language, in the reader's time zone.
const LOCALE = document.documentElement.lang || undefined;

const NICKNAME_KEY = "chat.nickname";
const OUTBOX_KEY = `chat.outbox.${config.room}`;
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
// Every other refusal of a message gives its text back to the user.
const RETRY_LATER = new Set(["store_failed", "broadcast_failed"]);
// The close code of a connection whose room this user may no longer enter.
const NO_ACCESS = 4403;
// What each state of the connection is called on the badge.
const STATES = {
  connecting: gettext("connecting"),
  connected: gettext("connected"),
  reconnecting: gettext("reconnecting"),
  offline: gettext("offline"),
  closed: gettext("no access"),
};
// What each refusal's code means, in the reader's language (README, "Error
// codes"). The server's own text (English) is shown for a code this page
// does not know, from a newer server.
const REFUSALS = {
  malformed_json: gettext("The chat could not read what this page sent."),
  not_an_object: gettext("The chat could not read what this page sent."),
  invalid_message: gettext("The message holds characters the chat does not accept (control characters)."),
  empty_message: gettext("The message is empty."),
  message_too_long: format(gettext("The message is too long: at most %(count)s characters."), { count: config.maxLength }),
  invalid_user: gettext("That nickname cannot be used: it holds invisible or control characters, or nothing visible."),
  user_too_long: format(gettext("The nickname is too long: at most %(count)s characters."), { count: config.userMaxLength }),
  binary_frame: gettext("The chat could not read what this page sent."),
  rate_limited: gettext("Too many messages: wait a moment. This one was not sent."),
  invalid_since: gettext("The chat could not tell what this page missed, and sent the latest messages instead."),
  broadcast_failed: gettext("The message was saved but not delivered live; others will see it shortly."),
  store_failed: gettext("The chat could not save the message; trying again."),
  invalid_client_id: gettext("The chat could not read what this page sent."),
  invalid_request: gettext("The chat could not read what this page sent."),
  sign_in_required: gettext("Sign in to post in this room: guests may only read."),
  name_taken: gettext("That nickname belongs to a registered account: sign in as them, or pick another nickname."),
  muted: gettext("You are muted in this room; the message was not sent."),
  banned: gettext("You are banned from this chat; the message was not sent."),
  not_allowed: gettext("Only its author or a moderator may delete a message."),
  not_found: gettext("That message is no longer there."),
  page_rate_limited: gettext("Too many requests for older messages: wait a moment."),
  moderation_rate_limited: gettext("Too many deletions or mutes at once: wait a moment and try again."),
  // Followed by the close (4403), which says the same.
  no_access: gettext("You no longer have access to this room."),
};
// not_allowed, when what was refused is a mute.
const MUTE_NOT_ALLOWED = gettext("Moderators and staff cannot be muted or banned from the chat.");
const UNTIL = {
  muted: gettext("You are muted in this room until %(until)s; the message was not sent."),
  banned: gettext("You are banned from this chat until %(until)s; the message was not sent."),
};

// The text to show for an error frame.
function refusalText(frame) {
  // A mute or ban for a time says when it ends ("until", ISO 8601): shown in local time.
  if (typeof frame.until === "string" && UNTIL[frame.code]) {
    const when = new Date(frame.until);
    return format(UNTIL[frame.code], { until: when.toLocaleString(LOCALE, { dateStyle: "medium", timeStyle: "short" }) });
  }
  return Object.hasOwn(REFUSALS, frame.code) ? REFUSALS[frame.code] : frame.error;
}

const seen = new Set();
let lastId = 0; // the cursor: the highest message id shown
// Whether the room's backlog has arrived once: from then on every reconnect
// asks for what came after the cursor, ?since=0 included (a room that was
// empty at join), so nothing said since is taken for history. The page joins
// with ?pages=1, so the server ends the backlog with a page frame however
// small the room: until that frame has been shown, a connection that drops
// joins afresh rather than page through the room from its first message.
let joined = false;
let lowestId = null; // the oldest message shown, for "load older"
let lastDay = null; // local day of the newest message shown, for separators
let socket = null;
let generation = 0; // counts connections, so each knows what it has sent
let attempts = 0;
let retryTimer = null;
let stableTimer = null;
let resendTimer = null;
let errorTimer = null;
let loadingOlder = false;

// The outbox: messages sent but not yet acknowledged, oldest first. Kept in
// sessionStorage (this tab only), so a reload resends them instead of losing
// them. Each: {clientId, message, user, ts} plus what this page load knows:
// sentOn (the connection generation it was last sent on), retryAt and
// retries (resending later), maybeStored (sent at least once, or left by an
// earlier load), fresh (sent the moment it was typed, on an open socket) and
// item (its <li>).
const outbox = loadOutbox();
// The outbox entry whose text is in the message box: the box is cleared
// when that message is acknowledged, and only then.
let heldClientId = null;
// A message sent before a reconnect (or a reload) may have been stored with
// its ack lost: the new connection's resync then brings it before the
// resend's ack says which pending item it is. So after a reconnect, incoming
// messages wait until every such resend is answered (or ANSWER_WAIT_MS),
// and no message shows twice, not even for a moment.
const ANSWER_WAIT_MS = 5000;
let awaiting = null; // client ids whose answer holds incoming frames back
let heldFrames = [];
let answerTimer = null;

// Who the page speaks for: a signed-in account posts under its own name
// whatever the frame says; a guest's nickname is the one the server holds
// for the session, else the one this browser used last.
if (config.signedIn) {
  userInput.value = config.nickname;
  userInput.readOnly = true;
  userInput.title = gettext("Signed in: you post under your account's name");
} else {
  userInput.value = config.nickname || localStorage.getItem(NICKNAME_KEY) || "";
  userInput.addEventListener("change", () => {
    localStorage.setItem(NICKNAME_KEY, userInput.value.trim());
  });
}
// Guests where guests may only read (absent on a server before accounts: may post).
if (config.canPost === false) {
  messageInput.disabled = true;
  messageInput.placeholder = gettext("Sign in to post in this room");
  form.querySelector("button[type=submit]").disabled = true;
  userInput.hidden = true;
}

function setStatus(state, text) {
  statusBadge.className = `status status-${state}`;
  statusBadge.dataset.state = state;
  statusBadge.textContent = text || STATES[state] || state;
}

function isOpen() {
  return socket !== null && socket.readyState === WebSocket.OPEN;
}

// The badge follows the socket: an open socket is "connected" whatever the
// browser's online events said in between.
function statusFromSocket() {
  if (isOpen()) setStatus("connected");
  else if (!navigator.onLine) setStatus("offline");
  else setStatus(attempts ? "reconnecting" : "connecting");
}

// sticky: stays until the user sends again (a refusal they must act on).
function showError(text, sticky = false) {
  errorBox.textContent = text;
  errorBox.hidden = false;
  clearTimeout(errorTimer);
  if (!sticky) errorTimer = setTimeout(hideError, 6000);
}

function hideError() {
  clearTimeout(errorTimer);
  errorBox.hidden = true;
}

// ---- client ids ------------------------------------------------------------

// crypto.randomUUID exists only in secure contexts (https, localhost,
// 127.0.0.1); a plain-http LAN address has crypto.getRandomValues only.
function newClientId() {
  if (typeof crypto.randomUUID === "function") return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6] & 0x0f) | 0x40; // version 4
  bytes[8] = (bytes[8] & 0x3f) | 0x80; // RFC 4122 variant
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

// ---- times and days (the reader's local time) ------------------------------

function localDay(when) {
  return `${when.getFullYear()}-${when.getMonth()}-${when.getDate()}`;
}

function dayLabel(when) {
  const today = new Date();
  const yesterday = new Date(today.getFullYear(), today.getMonth(), today.getDate() - 1);
  if (localDay(when) === localDay(today)) return gettext("Today");
  if (localDay(when) === localDay(yesterday)) return gettext("Yesterday");
  return when.toLocaleDateString(LOCALE, { weekday: "long", year: "numeric", month: "long", day: "numeric" });
}

function daySeparator(when) {
  const item = document.createElement("li");
  item.className = "day";
  item.dataset.day = localDay(when);
  item.setAttribute("role", "separator");
  item.textContent = dayLabel(when);
  return item;
}

function timeElement(when, iso) {
  const time = document.createElement("time");
  time.dateTime = iso;
  // A message not from today carries its date too (its day's separator may
  // be far above it).
  const today = localDay(when) === localDay(new Date());
  time.textContent = today
    ? when.toLocaleTimeString(LOCALE, { hour: "2-digit", minute: "2-digit" })
    : when.toLocaleString(LOCALE, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
  time.title = when.toLocaleString(LOCALE, { dateStyle: "full", timeStyle: "medium" });
  return time;
}

// ---- the log ---------------------------------------------------------------

function remember(id) {
  seen.add(id);
  if (seen.size > SEEN_MAX) {
    // A Set iterates in insertion order: drop the ids remembered first.
    let excess = seen.size - SEEN_MAX;
    for (const old of seen) {
      if (excess-- <= 0) break;
      seen.delete(old);
    }
  }
}

function messageItem(message) {
  const when = new Date(message.ts);
  const item = document.createElement("li");
  // Only the backlog at join and "load older" pages are dimmed; messages
  // resent to catch up after a reconnect look like live ones.
  item.className = message.history ? "message history" : "message";
  item.dataset.id = message.id;
  item.dataset.day = localDay(when);
  const user = document.createElement("span");
  user.className = message.guest ? "user guest" : "user";
  user.textContent = message.user;
  if (message.guest) user.title = gettext("guest (not signed in)");
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = message.message;
  item.append(timeElement(when, message.ts), user, text);
  if (mayDelete(message)) item.append(deleteButton(message));
  if (mayMute(message)) item.append(muteButton(message));
  return { item, when };
}

// ---- deleting --------------------------------------------------------------

// A signed-in account deletes its own messages (a guest's are never its own:
// a nickname is no proof), a moderator anyone's. The server decides anyway.
function mayDelete(message) {
  if (config.canModerate) return true;
  return Boolean(config.signedIn && !message.guest && message.user === config.nickname);
}

function deleteButton(message) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "delete";
  button.textContent = gettext("Delete");
  button.setAttribute("aria-label", format(gettext("Delete the message from %(user)s"), { user: message.user }));
  button.addEventListener("click", () => {
    if (!window.confirm(gettext("Delete this message for everyone?"))) return;
    if (!isOpen()) {
      showError(gettext("Not connected: try again when the chat is back."));
      return;
    }
    button.disabled = true;
    lastRequest = "delete";
    socket.send(JSON.stringify({ delete: message.id }));
  });
  return button;
}

// ---- muting ----------------------------------------------------------------

// A moderator mutes someone else in this room for MUTE_MINUTES (longer mutes,
// bans and lifting them: {"ban"} or the admin). The server decides anyway.
const MUTE_MINUTES = 10;
// What the moderation buttons asked last ("delete" or "mute"): a not_allowed
// refusal is about it.
let lastRequest = null;

function mayMute(message) {
  return Boolean(config.canModerate && message.user !== config.nickname && message.user !== "anonymous");
}

function muteButton(message) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "mute";
  button.textContent = format(gettext("Mute %(minutes)s min"), { minutes: MUTE_MINUTES });
  button.setAttribute("aria-label", format(gettext("Mute %(user)s in this room"), { user: message.user }));
  button.addEventListener("click", () => {
    const question = gettext("Mute %(user)s in this room for %(minutes)s minutes?");
    if (!window.confirm(format(question, { user: message.user, minutes: MUTE_MINUTES }))) return;
    if (!isOpen()) {
      showError(gettext("Not connected: try again when the chat is back."));
      return;
    }
    lastRequest = "mute";
    socket.send(JSON.stringify({ mute: message.user, minutes: MUTE_MINUTES }));
  });
  return button;
}

// {"restricted": "mute" | "ban", "user", "until"}: the moderator's mute or ban is in force.
function onRestricted(frame) {
  const until = frame.until ? new Date(frame.until).toLocaleString(LOCALE, { dateStyle: "medium", timeStyle: "short" }) : null;
  const text = frame.restricted === "ban"
    ? (until ? gettext("%(user)s is banned from the chat until %(until)s.") : gettext("%(user)s is banned from the chat."))
    : (until ? gettext("%(user)s is muted in this room until %(until)s.") : gettext("%(user)s is muted in this room."));
  showError(format(text, { user: frame.user, until }));
}

function firstPending() {
  return log.querySelector(":scope > li.pending");
}

function isNearBottom() {
  return log.scrollTop + log.clientHeight >= log.scrollHeight - 40;
}

// A new message, in id order: after every message shown so far, before the
// pending ones (which are always last).
function show(message) {
  if (seen.has(message.id)) return;
  remember(message.id);
  lastId = Math.max(lastId, message.id);
  lowestId = lowestId === null ? message.id : Math.min(lowestId, message.id);
  // Our own message, acknowledged before it came: it replaces its stand-in.
  const standIn = log.querySelector(":scope > li.acked[data-id='" + message.id + "']");
  if (standIn) standIn.remove();
  const own = standIn !== null;
  const atBottom = isNearBottom();
  const { item, when } = messageItem(message);
  const before = firstPending();
  if (localDay(when) !== lastDay) {
    lastDay = localDay(when);
    log.insertBefore(daySeparator(when), before);
  }
  log.insertBefore(item, before);
  if (atBottom) log.scrollTop = log.scrollHeight;
  if (!own && !message.history && !message.resync) announce(message);
}

// Screen readers hear live messages only, one by one, politely: the log
// itself is no live region, so a join's backlog of fifty is not read out.
// Our own messages are not announced (the reader just typed them).
const ANNOUNCED_MAX = 5;
function announce(message) {
  if (config.signedIn && !message.guest && message.user === config.nickname) return;
  const line = document.createElement("p");
  line.textContent = format(gettext("%(user)s says: %(message)s"), { user: message.user, message: message.message });
  announcer.append(line);
  while (announcer.childElementCount > ANNOUNCED_MAX) announcer.firstElementChild.remove();
}

// An "older" page, oldest first, all older than anything shown: goes on
// top, and the reader's view stays where it was.
let olderBatch = [];

function showOlder(messages) {
  const fresh = messages.filter((m) => !seen.has(m.id));
  if (!fresh.length) return;
  const fromBottom = log.scrollHeight - log.scrollTop;
  const batch = document.createDocumentFragment();
  let day = null;
  for (const message of fresh) {
    remember(message.id);
    lowestId = lowestId === null ? message.id : Math.min(lowestId, message.id);
    const { item, when } = messageItem(message);
    if (localDay(when) !== day) {
      day = localDay(when);
      batch.append(daySeparator(when));
    }
    batch.append(item);
  }
  const top = olderRow.nextElementSibling;
  // The page's last day may go on into the first day already shown.
  if (top && top.classList.contains("day") && top.dataset.day === day) top.remove();
  if (lastDay === null) lastDay = day;
  log.insertBefore(batch, olderRow.nextElementSibling);
  log.scrollTop = log.scrollHeight - fromBottom;
}

// {"deleted": id}: a message deleted for everyone leaves the page, and its
// day's separator with it when it was the day's last.
function removeMessage(id) {
  const item = log.querySelector(":scope > li.message[data-id='" + id + "']");
  if (!item) return;
  if (item.contains(document.activeElement)) messageInput.focus();
  const before = item.previousElementSibling;
  const after = item.nextElementSibling;
  item.remove();
  if (before && before.classList.contains("day") && (!after || after.dataset.day !== before.dataset.day)) {
    before.remove();
    if (before.dataset.day === lastDay) lastDay = null;
  }
}

function setOlderAvailable(more) {
  olderRow.hidden = !more;
  olderButton.disabled = false;
  olderButton.textContent = gettext("Load older messages");
  loadingOlder = false;
}

olderButton.addEventListener("click", () => {
  if (loadingOlder || lowestId === null || !isOpen()) return;
  loadingOlder = true;
  olderButton.disabled = true;
  olderButton.textContent = gettext("Loading…");
  olderBatch = [];
  socket.send(JSON.stringify({ before: lowestId }));
});

// ---- the outbox ------------------------------------------------------------

function loadOutbox() {
  try {
    const saved = JSON.parse(sessionStorage.getItem(OUTBOX_KEY) || "[]");
    return Array.isArray(saved) ? saved.filter((e) => e && typeof e.clientId === "string") : [];
  } catch {
    return [];
  }
}

function saveOutbox() {
  const kept = outbox.map(({ clientId, message, user, ts }) => ({ clientId, message, user, ts }));
  try {
    if (kept.length) sessionStorage.setItem(OUTBOX_KEY, JSON.stringify(kept));
    else sessionStorage.removeItem(OUTBOX_KEY);
  } catch {
    // Storage full or refused: the outbox still lives as long as the page.
  }
}

function pendingItem(entry) {
  const when = new Date(entry.ts);
  const item = document.createElement("li");
  item.className = "message pending";
  item.dataset.clientId = entry.clientId;
  const user = document.createElement("span");
  user.className = "user";
  user.textContent = entry.user || config.nickname || gettext("anonymous");
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = entry.message;
  const note = document.createElement("span");
  note.className = "note";
  note.textContent = gettext("sending…");
  item.append(timeElement(when, entry.ts), user, text, note);
  return item;
}

function setNote(entry, text) {
  if (entry.item) entry.item.querySelector(".note").textContent = text;
}

function findEntry(clientId) {
  return outbox.find((entry) => entry.clientId === clientId);
}

function dropEntry(entry) {
  const index = outbox.indexOf(entry);
  if (index >= 0) outbox.splice(index, 1);
  saveOutbox();
}

function sendEntry(entry) {
  const frame = { message: entry.message, client_id: entry.clientId };
  if (entry.user) frame.user = entry.user;
  socket.send(JSON.stringify(frame));
  entry.sentOn = generation;
  entry.maybeStored = true;
}

// Sends what the outbox holds and this connection has not sent yet, in
// order. One waiting to be retried holds back those after it, so the room
// sees them in the order they were typed.
function pump() {
  clearTimeout(resendTimer);
  if (!isOpen()) return;
  const now = Date.now();
  for (const entry of outbox) {
    if (entry.retryAt && entry.retryAt > now) {
      resendTimer = setTimeout(pump, entry.retryAt - now);
      return;
    }
    if (entry.sentOn !== generation) {
      entry.retryAt = 0;
      sendEntry(entry);
    }
  }
}

function resendLater(entry, note) {
  entry.retries = (entry.retries || 0) + 1;
  const ceiling = Math.min(RESEND_MAX_MS, RESEND_BASE_MS * 2 ** (entry.retries - 1));
  const delay = ceiling / 2 + Math.random() * (ceiling / 2);
  entry.retryAt = Date.now() + delay;
  entry.sentOn = null;
  setNote(entry, format(gettext("%(reason)s; trying again in %(seconds)s s…"), { reason: note, seconds: Math.ceil(delay / 1000) }));
  pump();
}

// The server refused the message for good: it leaves the outbox and its text
// goes back to the user, in the message box if that is free (or still holds
// it), otherwise in the log with a button to edit it.
function giveBack(entry, reason) {
  dropEntry(entry);
  const boxIsFree = messageInput.value === "" || messageInput.value === entry.message;
  if (boxIsFree) {
    entry.item.remove();
    messageInput.value = entry.message;
    messageInput.focus();
  } else {
    entry.item.classList.replace("pending", "failed");
    entry.item.dataset.clientId = "";
    setNote(entry, format(gettext("not sent: %(reason)s"), { reason }));
    const edit = document.createElement("button");
    edit.type = "button";
    edit.className = "edit";
    edit.textContent = gettext("Edit");
    edit.addEventListener("click", () => {
      if (messageInput.value.trim() && messageInput.value !== entry.message) {
        showError(gettext("Send or clear what is in the box first: Edit would replace it."));
        return;
      }
      entry.item.remove();
      messageInput.value = entry.message;
      messageInput.focus();
    });
    entry.item.querySelector(".note").append(edit);
  }
  if (heldClientId === entry.clientId) heldClientId = null;
  showError(format(gettext("Not sent: %(reason)s"), { reason }), true);
}

function onAck(frame) {
  const entry = findEntry(frame.ack);
  if (!entry) return; // acknowledged already (a resend's second ack)
  dropEntry(entry);
  if (heldClientId === entry.clientId) {
    heldClientId = null;
    if (messageInput.value === entry.message) messageInput.value = "";
  }
  if (typeof frame.id === "number" && !seen.has(frame.id)) {
    // The message itself is on its way (or comes with a resync): until then
    // the item stands for it, as sent, after the messages shown so far. Its
    // id is not the cursor's: messages before it may still be on their way.
    entry.item.dataset.id = frame.id;
    entry.item.className = "message acked";
    entry.item.querySelector(".note").remove();
    log.insertBefore(entry.item, firstPending());
  } else {
    entry.item.remove();
  }
}

function onRefused(frame) {
  const entry = findEntry(frame.client_id);
  if (!entry) {
    showError(refusalText(frame));
    return;
  }
  if (RETRY_LATER.has(frame.code)) {
    // store_failed: the database refused it, nothing was stored; the server
    // asks for it again later, so the outbox retries by itself, with
    // backoff, for as long as the page is open (a resend is stored once
    // however often it is sent). broadcast_failed: stored, not relayed; the
    // resend is acknowledged as a duplicate and the message comes by resync.
    showError(refusalText(frame));
    resendLater(entry, frame.code === "store_failed" ? gettext("not stored yet") : gettext("not delivered live yet"));
  } else if (frame.code === "rate_limited" && !entry.fresh) {
    // A backlog resent after a reconnect can outrun the rate limit by
    // itself; the user did nothing wrong, so it goes out a little later.
    resendLater(entry, gettext("waiting for the rate limit"));
  } else {
    giveBack(entry, refusalText(frame));
  }
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = messageInput.value;
  if (!text.trim()) return;
  hideError();
  const held = heldClientId && findEntry(heldClientId);
  if (held && held.message === text) {
    pump(); // Enter again on a message already on its way: no second copy
    return;
  }
  const user = userInput.value.trim();
  if (!config.signedIn) localStorage.setItem(NICKNAME_KEY, user);
  const entry = { clientId: newClientId(), message: text, user, ts: new Date().toISOString() };
  entry.item = pendingItem(entry);
  const waiting = outbox.length > 0 && outbox.some((e) => e.sentOn !== generation);
  entry.fresh = isOpen() && !waiting;
  outbox.push(entry);
  saveOutbox();
  heldClientId = entry.clientId;
  log.append(entry.item);
  log.scrollTop = log.scrollHeight;
  if (!isOpen()) setNote(entry, gettext("sending when connected…"));
  pump();
  messageInput.focus();
});

// Whatever a previous load of this tab left unacknowledged (and perhaps
// stored, its ack lost with the page).
for (const entry of outbox) {
  entry.maybeStored = true;
  entry.item = pendingItem(entry);
  log.append(entry.item);
}

// ---- the connection --------------------------------------------------------

function socketUrl() {
  const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
  // presence=1: the server tells this page who is here (a server before
  // presence ignores it and the list stays hidden).
  // pages=1: the backlog ends with a page frame, and this page asks for every
  // next page itself. (A server before it sends none after a small backlog:
  // the cursor of a message shown then decides, or a fresh join if none was.)
  const query = new URLSearchParams({ presence: "1", pages: "1" });
  if (joined || lastId) query.set("since", lastId);
  return `${scheme}//${window.location.host}/ws/chat/${encodeURIComponent(config.room)}/?${query}`;
}

// ---- who is here -----------------------------------------------------------

// {"presence": [{"user": "ann"}, {"user": "bob", "guest": true}], "anonymous": 2}
function showPresence(frame) {
  const entries = [];
  for (const person of frame.presence) {
    if (!person || typeof person.user !== "string") continue;
    const name = document.createElement("span");
    name.className = person.guest ? "person guest" : "person";
    name.textContent = person.user;
    if (person.guest) {
      name.title = gettext("guest (not signed in)");
      const mark = document.createElement("span");
      mark.className = "visually-hidden";
      mark.textContent = " " + gettext("(guest)");
      name.append(mark);
    }
    entries.push(name);
  }
  const anonymous = Number.isInteger(frame.anonymous) ? frame.anonymous : 0;
  if (anonymous > 0) {
    const more = document.createElement("span");
    more.className = "person anonymous";
    more.textContent = format(
      ngettext("+%(count)s guest", "+%(count)s guests", anonymous),
      { count: anonymous },
    );
    entries.push(more);
  }
  const separated = [];
  entries.forEach((entry, index) => {
    if (index) separated.push(gettext(", "));
    separated.push(entry);
  });
  presenceList.replaceChildren(...separated);
  presenceBox.classList.remove("stale");
  presenceBox.hidden = false;
}

function onPageEnd(frame) {
  if (frame.page === "history") {
    // (Unless the room had messages and none came: a history limit of 0.)
    if (lastId || !frame.more) joined = true;
    setOlderAvailable(Boolean(frame.more));
  } else if (frame.page === "older") {
    // The button's row first: hiding it after would move the view.
    setOlderAvailable(Boolean(frame.more));
    showOlder(olderBatch);
    olderBatch = [];
  } else if (frame.page === "resync" && frame.more) {
    // More missed messages wait on the server: ask for the next page.
    const since = typeof frame.last === "number" ? frame.last : lastId;
    if (isOpen()) socket.send(JSON.stringify({ since }));
  } else if (frame.page === "resync") {
    joined = true; // the room up to now, from the cursor
  }
}

function holdUntilAnswered() {
  const resent = outbox.filter((entry) => entry.maybeStored).map((entry) => entry.clientId);
  if (!resent.length) return;
  awaiting = new Set(resent);
  clearTimeout(answerTimer);
  answerTimer = setTimeout(releaseFrames, ANSWER_WAIT_MS);
}

function answered(clientId) {
  if (awaiting && awaiting.delete(clientId) && awaiting.size === 0) releaseFrames();
}

function releaseFrames() {
  clearTimeout(answerTimer);
  awaiting = null;
  const frames = heldFrames;
  heldFrames = [];
  for (const frame of frames) onRoomFrame(frame);
}

function onFrame(data) {
  if (data === null || typeof data !== "object") return;
  if (typeof data.ack === "string") {
    onAck(data);
    answered(data.ack);
  } else if (typeof data.error === "string") {
    if (typeof data.client_id === "string") {
      onRefused(data);
      answered(data.client_id);
    } else if (data.code === "page_rate_limited" && typeof data.since === "number") {
      // The next resync page, asked too fast (a long way behind): asked again
      // when the server says, on this connection (a new one resyncs itself).
      const asked = socket;
      setTimeout(() => {
        if (asked === socket && isOpen()) socket.send(JSON.stringify({ since: data.since }));
      }, Math.max(Number(data.retry_after) || 1, 0.05) * 1000);
    } else {
      // A refusal of no message: a deletion, a mute, a request, the cursor.
      const muting = data.code === "not_allowed" && lastRequest === "mute";
      showError(muting ? MUTE_NOT_ALLOWED : refusalText(data));
      if (data.code === "page_rate_limited" && loadingOlder) setOlderAvailable(true); // the button asks again
      if (data.code === "not_allowed" || data.code === "not_found" || data.code === "moderation_rate_limited") {
        for (const button of log.querySelectorAll("button.delete:disabled")) button.disabled = false;
      }
    }
  } else if (awaiting) {
    heldFrames.push(data);
  } else {
    onRoomFrame(data);
  }
}

// A live message without "seq" comes from an app server of a release before
// acks (during a rolling deploy): it will never acknowledge anything, so the
// echo of a message this connection sent stands for the ack, or the message
// would stay pending and be stored again at every reconnect.
function ackByEcho(message) {
  if ("seq" in message || message.history || message.resync) return;
  const entry = outbox.find((e) => e.sentOn === generation && e.message === message.message);
  if (entry) onAck({ ack: entry.clientId, id: message.id });
}

function onRoomFrame(data) {
  if (typeof data.page === "string") onPageEnd(data);
  else if (typeof data.deleted === "number") removeMessage(data.deleted);
  else if (typeof data.restricted === "string") onRestricted(data);
  else if (Array.isArray(data.presence)) showPresence(data);
  else if (typeof data.id === "number") {
    ackByEcho(data);
    if (loadingOlder && data.history && (lowestId === null || data.id < lowestId)) olderBatch.push(data);
    else show(data);
  }
  // Anything else is a frame from a newer server: ignored.
}

function connect() {
  clearTimeout(retryTimer);
  retryTimer = null;
  generation += 1;
  const current = new WebSocket(socketUrl());
  socket = current;
  statusFromSocket();
  current.addEventListener("open", () => {
    setStatus("connected");
    clearTimeout(stableTimer);
    stableTimer = setTimeout(() => { attempts = 0; }, STABLE_AFTER_MS);
    for (const entry of outbox) {
      entry.retryAt = 0; // a new connection is a new chance for every one
      setNote(entry, gettext("sending…"));
    }
    holdUntilAnswered();
    pump();
  });
  current.addEventListener("message", (event) => {
    if (statusBadge.dataset.state !== "connected") statusFromSocket();
    let data;
    try {
      data = JSON.parse(event.data);
    } catch {
      return;
    }
    onFrame(data);
  });
  current.addEventListener("close", (event) => {
    if (socket !== current) return;
    socket = null;
    presenceBox.classList.add("stale"); // who was here, until the next connection says
    clearTimeout(stableTimer);
    clearTimeout(resendTimer);
    // Held messages were not shown, so the cursor has not passed them: the
    // next connection's resync brings them again.
    clearTimeout(answerTimer);
    awaiting = null;
    heldFrames = [];
    if (loadingOlder) setOlderAvailable(true); // the request died with the socket
    if (event.code === NO_ACCESS) {
      // The room was made private, or this account left its members:
      // reconnecting would only be refused.
      setStatus("closed");
      presenceBox.hidden = true;
      showError(gettext("You no longer have access to this room."), true);
      messageInput.disabled = true;
      form.querySelector("button[type=submit]").disabled = true;
      return;
    }
    for (const entry of outbox) setNote(entry, gettext("sending when connected…"));
    scheduleReconnect();
  });
}

function scheduleReconnect() {
  attempts += 1;
  // Exponential backoff with jitter, so that every client of a restarted
  // server does not come back in the same instant.
  const ceiling = Math.min(RETRY_MAX_MS, RETRY_BASE_MS * 2 ** (attempts - 1));
  const delay = ceiling / 2 + Math.random() * (ceiling / 2);
  statusFromSocket();
  retryTimer = setTimeout(connect, delay);
}

window.addEventListener("online", () => {
  if (socket) {
    statusFromSocket(); // the socket lived through the blip: say so
  } else if (retryTimer !== null) {
    connect(); // the network is back: no need to wait out the backoff
  }
});
window.addEventListener("offline", () => setStatus("offline"));

connect();
