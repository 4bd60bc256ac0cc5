"""tlearn serve in-process (FastAPI's TestClient runs the app and its lifespan): answers equal to
`tlearn predict`, batching of concurrent requests, metadata, Grad-CAM, and every bad request."""
import asyncio
import io
import json
import struct
import zlib

import httpx
import pytest
from PIL import Image

import tlearn
from tlearn.infer import collect_paths, predict_files
from tlearn.serve import ServeSettings, create_app

from conftest import make_folder, train_tiny


@pytest.fixture(scope="module")
def served_run(tmp_path_factory):
    """A tiny run with a confidence threshold (train --coverage), so some answers are "unknown"."""
    root = tmp_path_factory.mktemp("serve")
    data = make_folder(root / "data", classes=("ant", "bee", "cat", "dog"), per_class=8, split_dirs=True)
    _, run = train_tiny(root, data, strategy="linear-probe", epochs=1, coverage=0.75)
    return run, data


@pytest.fixture(scope="module")
def client(served_run):
    from fastapi.testclient import TestClient

    app = create_app(served_run[0], ServeSettings(max_batch=8, max_wait_ms=20, max_body_mb=1))
    with TestClient(app) as test_client:
        yield test_client


def files_of(paths):
    return [("files", (path.name, path.read_bytes(), "image/png")) for path in paths]


def test_answers_equal_tlearn_predict(served_run, client):
    run, data = served_run
    paths, _ = collect_paths([str(data / "val")])
    trained = tlearn.load(run)
    threshold = trained.min_confidence()
    assert threshold  # the run's own, from --coverage
    expected = predict_files(trained, paths, top_k=3, min_confidence=threshold).rows
    from pathlib import Path

    response = client.post("/predict", files=files_of([Path(p) for p in paths]), data={"top_k": "3"})
    assert response.status_code == 200, response.text
    answers = response.json()["predictions"]
    assert [a["file"] for a in answers] == [Path(p).name for p in paths]
    for answer, row in zip(answers, expected):
        assert answer["labels"] == row["labels"] and answer["answered"] == row["answered"]
        assert answer["probs"] == pytest.approx(row["probs"], abs=1e-4)  # onnxruntime vs eager PyTorch
    assert any(not a["answered"] and a["label"] == "unknown" for a in answers)  # the threshold applies
    raw = client.post("/predict?top_k=2", content=Path(paths[0]).read_bytes())  # one image's raw bytes
    assert raw.status_code == 200 and raw.json()["predictions"][0]["labels"] == expected[0]["labels"][:2]


def test_concurrent_requests_are_batched(served_run):
    run, data = served_run
    images = [path.read_bytes() for path in sorted((data / "train" / "bee").iterdir())[:6]]
    app = create_app(run, ServeSettings(max_batch=8, max_wait_ms=200))

    async def drive():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://serve") as session:
                responses = await asyncio.gather(*(session.post("/predict", content=image) for image in images))
                health = (await session.get("/health")).json()
        return responses, health

    responses, health = asyncio.run(drive())
    assert all(r.status_code == 200 for r in responses)
    assert health["images"] == 6 and health["batches"] < 6  # six requests, fewer engine batches
    singles = [r.json()["predictions"][0]["probs"][0] for r in responses]
    trained = tlearn.load(run)
    expected = [row["probs"][0] for row in trained.predict([Image.open(io.BytesIO(b)) for b in images])]
    assert singles == pytest.approx(expected, abs=1e-4)


def test_health_metadata_and_page(served_run, client):
    assert client.get("/health").json()["status"] == "ok"
    meta = client.get("/metadata").json()
    assert meta["classes"] == ["ant", "bee", "cat", "dog"] and meta["engine"] == "onnxruntime"
    assert meta["calibration"]["min_confidence"] == tlearn.load(served_run[0]).min_confidence()
    assert meta["preprocessing"]["crop_size"] == 32 and meta["task"] == "single-label"
    assert meta["metrics"] == json.loads((served_run[0] / "summary.json").read_text())
    page = client.get("/")
    assert page.status_code == 200 and "<script>" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # self-contained: nothing fetched elsewhere


def test_grad_cam(served_run, client):
    path = next((served_run[1] / "val" / "cat").iterdir())
    response = client.post("/gradcam", files=files_of([path]), data={"label": "cat"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["label"] == "cat" and body["image"].startswith("data:image/png;base64,")
    assert client.post("/gradcam", files=files_of([path]), data={"label": "zebra"}).status_code == 422


def png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header claims width x height pixels (a decompression bomb's header)."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    header = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = header
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + header))
    return bytes(data)


def bad_requests(good: bytes) -> dict:
    """name -> (request keyword arguments for client.post("/predict"), status, words the error must hold)."""
    return {
        "not an image": ({"content": b"hello, not an image"}, 400, "not an image"),
        "truncated": ({"files": [("files", ("cut.png", good[:len(good) // 2], "image/png"))]}, 400, "cut.png"),
        "empty body": ({"content": b""}, 400, "empty body"),
        "over 100 Mpx": ({"content": png_claiming(12_000, 10_000)}, 413, "pixel"),
        "body over --max-body-mb": ({"content": b"\0" * (2 * 2 ** 20)}, 413, "max-body-mb"),
        "unknown field": ({"files": [("files", ("a.png", good, "image/png"))], "data": {"colour": "red"}}, 400,
                          "colour"),
        "unknown file field": ({"files": [("picture", ("a.png", good, "image/png"))]}, 400, "picture"),
        "unknown query": ({"content": good, "params": {"topk": "3"}}, 400, "topk"),
        "top_k 0": ({"content": good, "params": {"top_k": "0"}}, 422, "top_k"),
        "top_k 10000": ({"files": [("files", ("a.png", good, "image/png"))], "data": {"top_k": "10000"}}, 422,
                        "top_k"),
        "top_k not a number": ({"content": good, "params": {"top_k": "three"}}, 422, "top_k"),
    }


@pytest.mark.parametrize("case", list(bad_requests(b"")))
def test_bad_request_gets_a_4xx_and_the_next_good_one_is_answered(served_run, client, case):
    good = next((served_run[1] / "val" / "dog").iterdir()).read_bytes()
    arguments, status, words = bad_requests(good)[case]
    response = client.post("/predict", **arguments)
    assert response.status_code == status, response.text
    assert words in response.json()["error"]
    after = client.post("/predict", content=good)
    assert after.status_code == 200 and len(after.json()["predictions"]) == 1


def test_unknown_route_and_method_are_json(client):
    assert client.get("/nothing").json() == {"error": "Not Found"}
    assert client.get("/predict").status_code == 405
