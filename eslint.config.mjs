// The project's JavaScript linter (scripts/test runs `npx eslint`): eslint's
// recommended rules on the chat's static files, for a browser.
import js from "@eslint/js";
import globals from "globals";

export default [
  { ignores: ["node_modules/", "app/staticfiles/", "artifacts/", ".venv/", ".build/"] },
  js.configs.recommended,
  {
    files: ["app/chat/static/**/*.js"],
    languageOptions: {
      ecmaVersion: 2022,
      sourceType: "script",
      // Django's JavaScript catalog (gettext and the rest) is read through window: room.js falls back
      // when it is missing.
      globals: globals.browser,
    },
  },
  {
    // The room page: ES modules (room.js imports session.js), loaded with <script type="module">.
    files: ["app/chat/static/chat/room.js", "app/chat/static/chat/session.js"],
    languageOptions: { sourceType: "module" },
  },
];
