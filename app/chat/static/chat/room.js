// The room page: what a person sees and does. The session with the server
// (the websocket, its reconnects and resyncs, the pages, the outbox of
// messages not yet acknowledged) is session.js, which touches no element;
// this module shows what it reports and hands it what the user does.
// collectstatic writes session.js's hashed name in here (chatsite/staticfiles.py); its pattern wants the
// semicolon, and test_views checks that it did.
import { ChatSession } from "./session.js";

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

let lastDay = null; // local day of the newest message shown, for separators
let errorTimer = null;
// The outbox entry whose text is in the message box: the box is cleared
// when that message is acknowledged, and only then.
let heldClientId = null;
// Each outbox entry's <li>, by client id.
const items = new Map();

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

function setStatus(state) {
  statusBadge.className = `status status-${state}`;
  statusBadge.dataset.state = state;
  statusBadge.textContent = STATES[state] || state;
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
    if (!session.send({ delete: message.id })) {
      showError(gettext("Not connected: try again when the chat is back."));
      return;
    }
    button.disabled = true;
    lastRequest = "delete";
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
    if (!session.send({ mute: message.user, minutes: MUTE_MINUTES })) {
      showError(gettext("Not connected: try again when the chat is back."));
      return;
    }
    lastRequest = "mute";
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
function showOlder(fresh) {
  const fromBottom = log.scrollHeight - log.scrollTop;
  const batch = document.createDocumentFragment();
  let day = null;
  for (const message of fresh) {
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
}

olderButton.addEventListener("click", () => {
  if (!session.loadOlder()) return;
  olderButton.disabled = true;
  olderButton.textContent = gettext("Loading…");
});

// ---- the outbox ------------------------------------------------------------

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
  items.set(entry.clientId, item);
  return item;
}

function setNote(entry, text) {
  const item = items.get(entry.clientId);
  if (item) item.querySelector(".note").textContent = text;
}

// Why an entry waits to be sent again (the refusal's code).
const WAITING_FOR = {
  store_failed: gettext("not stored yet"),
  broadcast_failed: gettext("not delivered live yet"),
  rate_limited: gettext("waiting for the rate limit"),
};

function showNote(entry, kind, info) {
  if (kind === "sending") setNote(entry, gettext("sending…"));
  else if (kind === "waiting") setNote(entry, gettext("sending when connected…"));
  else if (kind === "retrying") {
    const reason = WAITING_FOR[info.code] || info.code;
    setNote(entry, format(gettext("%(reason)s; trying again in %(seconds)s s…"), { reason, seconds: info.seconds }));
  }
}

// The server refused the message for good: its text goes back to the user,
// in the message box if that is free (or still holds it), otherwise in the
// log with a button to edit it.
function giveBack(entry, frame) {
  const reason = refusalText(frame);
  const item = items.get(entry.clientId);
  items.delete(entry.clientId);
  const boxIsFree = messageInput.value === "" || messageInput.value === entry.message;
  if (boxIsFree) {
    item.remove();
    messageInput.value = entry.message;
    messageInput.focus();
  } else {
    item.classList.replace("pending", "failed");
    item.dataset.clientId = "";
    const note = item.querySelector(".note");
    note.textContent = format(gettext("not sent: %(reason)s"), { reason });
    const edit = document.createElement("button");
    edit.type = "button";
    edit.className = "edit";
    edit.textContent = gettext("Edit");
    edit.addEventListener("click", () => {
      if (messageInput.value.trim() && messageInput.value !== entry.message) {
        showError(gettext("Send or clear what is in the box first: Edit would replace it."));
        return;
      }
      item.remove();
      messageInput.value = entry.message;
      messageInput.focus();
    });
    note.append(edit);
  }
  if (heldClientId === entry.clientId) heldClientId = null;
  showError(format(gettext("Not sent: %(reason)s"), { reason }), true);
}

// id: the message's, when the message itself is still on its way (or comes
// with a resync): until then the item stands for it, as sent, after the
// messages shown so far.
function onAcked(entry, id) {
  const item = items.get(entry.clientId);
  items.delete(entry.clientId);
  if (heldClientId === entry.clientId) {
    heldClientId = null;
    if (messageInput.value === entry.message) messageInput.value = "";
  }
  if (id !== null) {
    item.dataset.id = id;
    item.className = "message acked";
    item.querySelector(".note").remove();
    log.insertBefore(item, firstPending());
  } else {
    item.remove();
  }
}

// An error frame that gives no message back: shown for a while.
function onError(frame) {
  const muting = frame.code === "not_allowed" && lastRequest === "mute";
  showError(muting ? MUTE_NOT_ALLOWED : refusalText(frame));
  if (frame.code === "not_allowed" || frame.code === "not_found" || frame.code === "moderation_rate_limited") {
    for (const button of log.querySelectorAll("button.delete:disabled")) button.disabled = false;
  }
}

function onNoAccess() {
  presenceBox.hidden = true;
  showError(gettext("You no longer have access to this room."), true);
  messageInput.disabled = true;
  form.querySelector("button[type=submit]").disabled = true;
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

// ---- the session -----------------------------------------------------------

const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
const session = new ChatSession({
  room: config.room,
  endpoint: `${scheme}//${window.location.host}/ws/chat/${encodeURIComponent(config.room)}/`,
  storage: window.sessionStorage,
  isOnline: () => navigator.onLine,
  view: {
    status: setStatus,
    message: show,
    older: showOlder,
    olderAvailable: setOlderAvailable,
    acked: onAcked,
    note: showNote,
    givenBack: giveBack,
    error: onError,
    deleted: removeMessage,
    restricted: onRestricted,
    presence: showPresence,
    presenceStale: () => presenceBox.classList.add("stale"),
    noAccess: onNoAccess,
  },
});

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = messageInput.value;
  if (!text.trim()) return;
  hideError();
  const held = heldClientId && session.find(heldClientId);
  if (held && held.message === text) {
    session.pump(); // Enter again on a message already on its way: no second copy
    return;
  }
  const user = userInput.value.trim();
  if (!config.signedIn) localStorage.setItem(NICKNAME_KEY, user);
  const entry = session.post(text, user);
  heldClientId = entry.clientId;
  log.append(pendingItem(entry));
  log.scrollTop = log.scrollHeight;
  if (!session.isOpen()) showNote(entry, "waiting");
  messageInput.focus();
});

// Whatever a previous load of this tab left unacknowledged (and perhaps
// stored, its ack lost with the page).
for (const entry of session.outbox) log.append(pendingItem(entry));

window.addEventListener("online", () => session.networkChanged(true));
window.addEventListener("offline", () => session.networkChanged(false));

session.connect();
