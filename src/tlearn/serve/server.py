"""Run the app on uvicorn: bind the port first (a port in use is one line and exit 2, not a
traceback), print where it listens, and shut down gracefully on SIGTERM or SIGINT: uvicorn stops
accepting, answers the requests in flight, then the app's lifespan stops the batcher, and the
command returns 0."""
from __future__ import annotations

import logging
import socket
from pathlib import Path

import torch
import uvicorn

from ..errors import UserError
from .app import ServeSettings, create_app

logger = logging.getLogger(__name__)

GRACEFUL_SECONDS = 30  # in-flight requests get this long after SIGTERM before connections are cut


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: any free one); UserError when it cannot be had."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # IPPROTO_TCP, not the default 0: asyncio sets TCP_NODELAY only on connections whose socket says
        # TCP, and without it every small response waited for a delayed ACK (/health took 44 ms, not 1)
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT from a previous server
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port} ({error.strerror or error}): is another server "
                        "using the port? Choose another with --port") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve_run(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8000,
              settings: ServeSettings | None = None) -> int:
    """Serve `run_dir`'s model until SIGTERM or SIGINT; 0 after a graceful shutdown."""
    sock = bind(host, port)
    try:
        app = create_app(run_dir, settings)
        engine = app.state.service.engine.name
        if hasattr(app.state.service.engine, "warm_up"):
            # With onnxruntime answering, PyTorch only decodes and crops, one image per thread of the
            # decoding pool: its OpenMP threads would add nothing but spin after each operation and
            # take the cores onnxruntime's threads need next. Set here, in the server's own process
            # (the engine's sessions already have their thread count), not in the app, which tests
            # and other programs build in theirs.
            torch.set_num_threads(1)
        run_app(app, sock, f"serving {run_dir} ({engine}) on " + "{url} (Ctrl+C to stop)")
    finally:
        sock.close()
    print("tlearn serve: stopped", flush=True)
    return 0


def run_app(app, sock: socket.socket, banner: str) -> None:
    """Run an ASGI app on uvicorn over the bound `sock` until SIGTERM or SIGINT; `banner` (its
    `{url}` filled in) is printed once the app is built, so a caller can read the port from it."""
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=GRACEFUL_SECONDS,
                            access_log=False, lifespan="on")
    server = _Server(config)
    bound = sock.getsockname()
    display = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    print(banner.replace("{url}", f"http://{display}:{bound[1]}"), flush=True)
    server.run(sockets=[sock])


class _Server(uvicorn.Server):
    """uvicorn re-raises a caught SIGTERM/SIGINT after its graceful shutdown, so the process would end
    by the signal (or KeyboardInterrupt); the shutdown was clean, so the command exits 0."""

    def handle_exit(self, sig, frame) -> None:
        super().handle_exit(sig, frame)
        self._captured_signals.clear()
