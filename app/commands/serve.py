"""`llmlens serve [MODEL]`: serve one model over an OpenAI-compatible HTTP API.

Binds 127.0.0.1 by default; any other address needs `--api-key` (then every endpoint but
/health requires `Authorization: Bearer KEY`). Requests run one at a time in arrival order;
at most `--queue` wait, later ones get 503 with Retry-After. Ctrl-C stops the server: running
generations are cancelled. Endpoints and formats: app/server/app.py.
"""

from __future__ import annotations

import argparse
import ipaddress
import os

from engine.errors import LLMLensError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve the model over an OpenAI-compatible HTTP API")
    p.add_argument("model", nargs="?", default=None,
                   help="GGUF file, or 'default' for the embedded model")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; others need --api-key)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 = any free)")
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' (default: $LLMLENS_API_KEY if set)")
    p.add_argument("-c", "--ctx", "--ctx-size", dest="ctx", type=int, default=None,
                   help="context size in tokens (default: the engine's)")
    p.add_argument("-t", "--threads", type=int, default=None, help="CPU threads")
    p.add_argument("--queue", type=int, default=16,
                   help="requests that may wait behind the running one (default 16)")
    p.add_argument("-v", "--verbose", action="store_true", help="log every request")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    api_key = args.api_key or os.environ.get("LLMLENS_API_KEY") or None
    if not is_loopback(args.host) and not api_key:
        raise LLMLensError(f"refusing to serve on {args.host} without --api-key: anyone who can "
                           f"reach that address could use the model (bind 127.0.0.1, or set a key)")
    if not 0 <= args.port <= 65535:
        raise LLMLensError(f"--port must be in 0..65535, got {args.port}")
    if args.queue < 1:
        raise LLMLensError(f"--queue must be at least 1, got {args.queue}")

    import uvicorn

    from app.server.app import create_app
    from engine.default_model import resolve_model_path
    from engine.models.base import load_model
    from engine.threads import set_threads
    from engine.tokenizer import load_tokenizer

    path = resolve_model_path(args.model)
    model = load_model(path, n_ctx=args.ctx, threads=args.threads)
    threads = set_threads(args.threads)
    tokenizer = load_tokenizer(model.gguf)
    name = path.stem
    app = create_app(model, tokenizer, model_name=name, api_key=api_key, max_queue=args.queue)

    class _Server(uvicorn.Server):
        async def startup(self, sockets=None) -> None:
            await super().startup(sockets)
            if self.started:  # the port is bound: say where (with the real port for --port 0)
                host, port = self.servers[0].sockets[0].getsockname()[:2]
                shown = f"[{host}]" if ":" in host else host
                print(f"llmlens serve: {name} on http://{shown}:{port} "
                      f"(n_ctx {model.n_ctx}, {threads} threads)", flush=True)

    config = uvicorn.Config(app, host=args.host, port=args.port, lifespan="on",
                            log_level="info" if args.verbose else "warning",
                            access_log=args.verbose, timeout_graceful_shutdown=3,
                            # open connections beyond the queue get uvicorn's own 503
                            limit_concurrency=args.queue + 64)
    server = _Server(config)
    try:
        server.run()
    except KeyboardInterrupt:
        pass  # uvicorn re-raises the Ctrl-C it handled, after a clean shutdown
    # uvicorn returns (rather than raising) when it could not bind
    return 0 if server.started else 1
