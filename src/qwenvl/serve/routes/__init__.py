"""The server's routes, one module per group: chat (/v1/chat/completions), completions (/v1/completions),
models (/v1/models), health (/health, /metrics), web (the chat page and its helpers). common holds the
request path they share. Each module's `router` is included by app.create_app."""
