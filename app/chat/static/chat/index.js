// The room picker: Enter (or the button) takes you to /chat/<room>/.
"use strict";

const ROOM_NAME = /^[\p{L}\p{N}_-]{1,64}$/u;
const form = document.getElementById("room-form");
const input = document.getElementById("room-name-input");
const error = document.getElementById("room-error");

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const room = input.value.trim();
  if (!ROOM_NAME.test(room)) {
    error.hidden = false;
    input.focus();
    return;
  }
  window.location.pathname = `/chat/${encodeURIComponent(room)}/`;
});
input.addEventListener("input", () => { error.hidden = true; });
