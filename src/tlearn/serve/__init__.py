"""`tlearn serve RUN`: a run's model behind an HTTP API (FastAPI on uvicorn) that gathers concurrent
requests into batches for the onnxruntime engine, with a web page at `/`.

Other packages import these names from here, the package's front door; modules whose
names start with _ are its own."""
from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "create_app": "app", "ServeSettings": "app",
    "serve_run": "server", "bind": "server", "run_app": "server",
}
__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
