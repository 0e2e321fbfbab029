// The room page: a websocket that reconnects by itself and resyncs with
// ?since=<last id>, so a dropped connection loses and repeats nothing.
"use strict";

const config = JSON.parse(document.getElementById("chat-config").textContent);
const log = document.getElementById("chat-log");
const form = document.getElementById("chat-form");
const messageInput = document.getElementById("chat-message-input");
const userInput = document.getElementById("chat-user-input");
const statusBadge = document.getElementById("status");
const errorBox = document.getElementById("chat-error");

const NICKNAME_KEY = "chat.nickname";
const RETRY_BASE_MS = 500;
const RETRY_MAX_MS = 15000;

const seen = new Set(); // ids shown, so a resync never shows one twice
let lastId = 0;
let socket = null;
let attempts = 0;
let retryTimer = null;
let errorTimer = null;

userInput.value = localStorage.getItem(NICKNAME_KEY) || "";
userInput.addEventListener("change", () => {
  localStorage.setItem(NICKNAME_KEY, userInput.value.trim());
});

function setStatus(state, text) {
  statusBadge.className = `status status-${state}`;
  statusBadge.dataset.state = state;
  statusBadge.textContent = text || state;
}

function showError(text) {
  errorBox.textContent = text;
  errorBox.hidden = false;
  clearTimeout(errorTimer);
  errorTimer = setTimeout(() => { errorBox.hidden = true; }, 6000);
}

function formatTime(iso) {
  const when = new Date(iso);
  return when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function show(message) {
  if (seen.has(message.id)) return;
  seen.add(message.id);
  lastId = Math.max(lastId, message.id);
  const item = document.createElement("li");
  item.className = message.history ? "message history" : "message";
  item.dataset.id = message.id;
  const time = document.createElement("time");
  time.dateTime = message.ts;
  time.textContent = formatTime(message.ts);
  const user = document.createElement("span");
  user.className = "user";
  user.textContent = message.user;
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = message.message;
  item.append(time, user, text);
  const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 40;
  log.append(item);
  if (atBottom) log.scrollTop = log.scrollHeight;
}

function socketUrl() {
  const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
  const since = lastId ? `?since=${lastId}` : "";
  return `${scheme}//${window.location.host}/ws/chat/${encodeURIComponent(config.room)}/${since}`;
}

function connect() {
  clearTimeout(retryTimer);
  if (!navigator.onLine) {
    setStatus("offline");
    return; // the "online" event brings us back
  }
  setStatus(attempts ? "reconnecting" : "connecting");
  socket = new WebSocket(socketUrl());
  socket.addEventListener("open", () => {
    attempts = 0;
    setStatus("connected");
  });
  socket.addEventListener("message", (event) => {
    let data;
    try {
      data = JSON.parse(event.data);
    } catch {
      return;
    }
    if (data.error) showError(data.error);
    else if (typeof data.id === "number") show(data);
  });
  socket.addEventListener("close", () => {
    socket = null;
    scheduleReconnect();
  });
}

function scheduleReconnect() {
  attempts += 1;
  // Exponential backoff with jitter, so that every client of a restarted
  // server does not come back in the same instant.
  const ceiling = Math.min(RETRY_MAX_MS, RETRY_BASE_MS * 2 ** (attempts - 1));
  const delay = ceiling / 2 + Math.random() * (ceiling / 2);
  setStatus(navigator.onLine ? "reconnecting" : "offline");
  retryTimer = setTimeout(connect, delay);
}

window.addEventListener("online", () => {
  if (!socket) connect();
});
window.addEventListener("offline", () => setStatus("offline"));

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = messageInput.value;
  if (!text.trim()) return;
  if (!socket || socket.readyState !== WebSocket.OPEN) {
    // Keep the text in the box: nothing typed is lost while offline.
    showError("Not connected: the message was not sent. It is still in the box; send it again once connected.");
    return;
  }
  const user = userInput.value.trim();
  localStorage.setItem(NICKNAME_KEY, user);
  socket.send(JSON.stringify(user ? { message: text, user } : { message: text }));
  messageInput.value = "";
  messageInput.focus();
});

connect();
