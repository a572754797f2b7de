"""The OpenAI-compatible server (`qwenvl serve`): app.create_app(pipe, ServerSettings(...)) -> FastAPI app.

Modules: protocol (request validation, response objects), media (safe media loading), scheduler
(continuous batching on a worker thread), metrics (Prometheus text), loadtest (`qwenvl bench-serve`)."""
