"""The chat's websocket benchmark: load generator, reference server, comparison.

    scripts/bench                      # = python -m bench compare
    python -m bench run URL --clients 500 --rate 20 --duration 20
    python -m bench --help

Modules: loadgen (multi-process clients and the figures they measure),
bare_server (the websockets-only reference), servers (starting and stopping
local servers), memory (server RSS), suite (compare and search), report
(text, Markdown, plot).
"""
