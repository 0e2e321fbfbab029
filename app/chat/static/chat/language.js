// The language switcher on every page: choosing a language switches at once
// (the form posts to Django's set_language, which keeps it in a cookie).
// In a file of its own: the site's Content-Security-Policy allows no inline script.
"use strict";

const languageSelect = document.getElementById("language-select");
if (languageSelect) {
  languageSelect.addEventListener("change", () => languageSelect.form.submit());
}
