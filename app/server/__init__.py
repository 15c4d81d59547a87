"""`llmlens serve`: an OpenAI-compatible HTTP server on the engine (Starlette + uvicorn).

- `app.py`: the routes, API-key check, body limits and streaming (`create_app`);
- `protocol.py`: request validation and the OpenAI / llama.cpp response bodies;
- `engine_loop.py`: the one engine thread and its bounded FIFO of jobs;
- `trace_npz.py`: an inspection as `llmlens trace`'s .npz arrays (`POST /v1/lens/trace`).
"""
