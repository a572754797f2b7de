"""The OpenAI-compatible server (`qwenvl serve`): app.create_app(pipe, ServerSettings(...)) -> FastAPI app.

Modules: app (the factory), routes/ (one module per route group), prepare (a request's preprocessing),
state (what the routes share), scheduler (continuous batching over the Pipeline's generation driver on
a worker thread), protocol and completions (request validation, response objects), media (safe media
loading), metrics (Prometheus text), loadtest (`qwenvl bench-serve`)."""
