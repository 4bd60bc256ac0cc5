"""The HTTP API of `tlearn serve`: POST /predict, POST /gradcam, GET /health, GET /metadata and the
web page at /. FastAPI on uvicorn: well kept, asynchronous (a request waiting for its batch holds
no thread), multipart built in, and a plain ASGI app that tests can drive in-process.

A request's images are decoded on a thread pool, then join the dynamic batcher (_batcher.py) that
runs them through the engine (infer/engines.py: the run's onnxruntime graph by default, the int8
graph or PyTorch on request); TrainedModel.answer turns the logits into what `tlearn predict`
answers: calibrated probabilities, top-k, "unknown" below the confidence threshold, multi-label
thresholds.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException

from ..data import eval_transform_uint8, normalize_batch
from ..errors import UserError
from ..files import read_json
from ..hub import is_hub_name
from ..infer import load, open_engine
from ..reports import grad_cam, overlay_image
from ._batcher import Batcher
from ._page import PAGE
from ._requests import RequestError, Upload, decode, int_value, read_upload


@dataclass(frozen=True)
class ServeSettings:
    engine: str = "auto"  # infer.ENGINES, or an exported .onnx file
    max_batch: int = 16  # images per engine batch
    max_wait_ms: float = 10.0  # how long a request waits for others to join its batch
    max_body_mb: float = 20.0
    min_confidence: float | None = None  # below it, "unknown" (default: the run's own threshold)
    coverage: float | None = None  # or the threshold that answers this share of validation images
    decode_threads: int | None = None  # default: the CPU count


class Service:
    """The run's model, its engine, the batcher and the decoding pool: what the routes use."""

    def __init__(self, run_dir: str | Path, settings: ServeSettings):
        self.settings = settings
        self.trained = load(run_dir)
        self.run_dir = Path(self.trained.run_dir or run_dir)  # a hub name's downloaded folder
        # A pushed model's folder is huggingface_hub's cache: serve only reads it, so no engine graph
        # is cached there and the eager model answers (int8 needs a run folder's export).
        hub = is_hub_name(run_dir)
        if hub and settings.engine not in ("auto", "torch"):
            raise UserError(f"--engine {settings.engine} needs a run folder; {run_dir} serves with --engine torch")
        self.engine = open_engine(self.trained.model, None if hub else run_dir, settings.engine)
        if hasattr(self.engine, "warm_up"):  # every session made before the first request
            self.engine.warm_up(settings.max_batch)
        self.threshold = self.trained.min_confidence(settings.min_confidence, settings.coverage)
        self.transform = eval_transform_uint8(self.trained.preprocessing)
        self.batcher = Batcher(self.engine.logits, settings.max_batch, settings.max_wait_ms)
        self.decoding = ThreadPoolExecutor(settings.decode_threads or os.cpu_count() or 2,
                                           thread_name_prefix="tlearn-decode")
        self.explaining = threading.Lock()  # Grad-CAM runs the eager model: one at a time
        self.receiving = 0  # requests whose body is still arriving

    @property
    def max_body_bytes(self) -> int:
        return int(self.settings.max_body_mb * 2 ** 20)

    async def upload(self, request: Request, allowed_values: tuple[str, ...]) -> Upload:
        """The request's images and values; /health counts the requests still sending theirs."""
        self.receiving += 1
        try:
            return await read_upload(request, self.max_body_bytes, allowed_values)
        finally:
            self.receiving -= 1

    async def decoded(self, upload: Upload) -> torch.Tensor:
        loop = asyncio.get_running_loop()
        crops = await asyncio.gather(*(loop.run_in_executor(self.decoding, decode, name, data, self.transform)
                                       for name, data in upload.images))
        return torch.stack(crops)

    async def predict(self, upload: Upload) -> list[dict[str, Any]]:
        top_k = int_value(upload, "top_k", 1, 1, len(self.trained.class_names))
        with self.batcher.arriving():
            images = await self.decoded(upload)
        logits = await self.batcher.logits(images)
        rows = self.trained.answer(logits, top_k, self.threshold)
        return [{"file": name, **row} for (name, _), row in zip(upload.images, rows)]

    async def explain(self, upload: Upload) -> dict[str, Any]:
        """Grad-CAM of one image for `label` (default: its most probable class), as a PNG data URL."""
        if len(upload.images) != 1:
            raise RequestError(400, f"/gradcam explains one image at a time, got {len(upload.images)}")
        label = upload.values.get("label")
        names = self.trained.class_names
        if label is not None and label not in names:
            raise RequestError(422, f"label {label[:60]!r} is not one of the model's classes")
        crop = (await self.decoded(upload))[0]
        picture = await asyncio.get_running_loop().run_in_executor(self.decoding, self._grad_cam, crop, label)
        return {"file": upload.images[0][0], **picture}

    def _grad_cam(self, crop: torch.Tensor, label: str | None) -> dict[str, Any]:
        model = self.trained.model
        inputs = normalize_batch(crop.unsqueeze(0), self.trained.preprocessing)
        with self.explaining:
            if label is None:
                with torch.inference_mode():
                    label = self.trained.class_names[int(model(inputs).argmax(1))]
            cam = grad_cam(model, inputs, torch.tensor([self.trained.class_names.index(label)]))[0]
        image = overlay_image(crop.permute(1, 2, 0).numpy(), cam.numpy())
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return {"label": label, "image": "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()}

    def metadata(self) -> dict[str, Any]:
        info = self.trained.model.info
        try:
            metrics = read_json(self.run_dir / "summary.json")
        except (OSError, ValueError):
            metrics = {}
        return {"model": info.name, "task": info.task, "classes": list(info.class_names),
                "preprocessing": asdict(info.preprocessing),
                "calibration": {"temperature": info.temperature, "min_confidence": self.threshold,
                                "thresholds": list(info.thresholds)},
                "metrics": metrics, "engine": self.engine.name,
                "batching": {"max_batch": self.settings.max_batch, "max_wait_ms": self.settings.max_wait_ms},
                "max_body_mb": self.settings.max_body_mb}


def create_app(run_dir: str | Path, settings: ServeSettings | None = None) -> FastAPI:
    """The app serving `run_dir`'s model; the model and engine load now, before any port is bound."""
    service = Service(run_dir, settings or ServeSettings())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        service.batcher.start()
        yield
        await service.batcher.stop()  # after uvicorn has answered every request in flight
        service.decoding.shutdown(wait=True)

    app = FastAPI(title="tlearn serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    _add_error_handlers(app)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return PAGE

    @app.get("/health")
    async def health() -> dict[str, Any]:
        batcher = service.batcher
        return {"status": "ok", "engine": service.engine.name, "batches": batcher.batches, "images": batcher.images,
                "receiving": service.receiving, "waiting": batcher.waiting}

    @app.get("/metadata")
    async def metadata() -> dict[str, Any]:
        return service.metadata()

    @app.post("/predict")
    async def predict(request: Request) -> dict[str, Any]:
        return {"predictions": await service.predict(await service.upload(request, ("top_k",)))}

    @app.post("/gradcam")
    async def gradcam(request: Request) -> dict[str, Any]:
        return await service.explain(await service.upload(request, ("label",)))

    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestError)
    async def bad_request(request: Request, error: RequestError) -> JSONResponse:
        return JSONResponse({"error": error.message}, status_code=error.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:  # 404, 405
        return JSONResponse({"error": str(error.detail)}, status_code=error.status_code)
