"""The labelling page's HTTP app (FastAPI, run by serve's uvicorn pieces): the page at /, the
pool's images, and a small JSON API the page (or a script) drives.

GET /api/state            the next image (or review item), guesses, classes, counts, estimate, curve
GET /image/PATH           a pool image (only the pool's own)
POST /api/answer          {"path", "label"}: "" skips
POST /api/undo            takes back this server's last answer
POST /api/class           {"name"}: a new class
POST /api/review          {"action", "label"}: review mode's keep / relabel / remove

The routes are plain functions: FastAPI runs them on its thread pool, so a table write or a
k-means never blocks the event loop, and the probe's refit runs on its own thread.
"""
from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from fastapi import Body, FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException

from ..errors import UserError
from ..serve import run_app
from ._page import PAGE


def create_label_app(session) -> FastAPI:
    """The app over a LabelSession or a ReviewSession (review mode adds /api/review)."""
    app = FastAPI(title="tlearn label", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.session = session

    @app.exception_handler(UserError)
    async def refused(request: Request, error: UserError) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:  # 404, 405
        return JSONResponse({"error": str(error.detail)}, status_code=error.status_code)

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE

    @app.get("/api/state")
    def state() -> dict[str, Any]:
        return session.state()

    @app.get("/image/{path:path}")
    def image(path: str) -> FileResponse:
        if path not in session.pool.index:
            raise HTTPException(404, f"{path!r} is not an image of the pool")
        return FileResponse(session.pool.full_path(path), headers={"Cache-Control": "no-store"})

    @app.post("/api/answer")
    def answer(path: str = Body(...), label: str = Body("")) -> dict[str, Any]:
        session.answer(path, label)
        return session.state()

    @app.post("/api/undo")
    def undo() -> dict[str, Any]:
        return {"undone": session.undo(), **session.state()}

    @app.post("/api/class")
    def add_class(name: str = Body(..., embed=True)) -> dict[str, Any]:
        session.add_class(name)
        return session.state()

    if hasattr(session, "review"):
        @app.post("/api/review")
        def review(key: str = Body(...), action: str = Body(...), label: str = Body("")) -> dict[str, Any]:
            session.review(key, action, label)
            return session.state()

    return app


def serve_labelling(session, sock: socket.socket, table: str | Path) -> int:
    """Run the page over the bound `sock` until SIGTERM or SIGINT; 0 after a graceful stop."""
    mode = "reviewing" if hasattr(session, "review") else "labelling"
    run_app(create_label_app(session), sock, f"{mode} {session.pool.root} into {table} on " + "{url} (Ctrl+C to stop)")
    print("tlearn label: stopped", flush=True)
    return 0
