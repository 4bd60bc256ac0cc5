"""The server a tutorial reader writes (benchmarks/serve.py's baseline): FastAPI, `async def predict`,
one eager PyTorch forward per request, the run's model and preprocessing.

    python benchmarks/_tutorial_server.py RUN PORT
"""
import io
import sys

import torch
import uvicorn
from fastapi import FastAPI, File, UploadFile
from PIL import Image

import tlearn
from tlearn.data import eval_transform

trained = tlearn.load(sys.argv[1])
model, transform = trained.model.eval(), eval_transform(trained.preprocessing)
app = FastAPI()


@app.post("/predict")
async def predict(files: UploadFile = File(...)):  # noqa: B008 (FastAPI's idiom, as tutorials write it)
    image = Image.open(io.BytesIO(await files.read())).convert("RGB")
    with torch.no_grad():
        probs = model(transform(image).unsqueeze(0)).softmax(dim=1)[0]
    value, index = probs.max(dim=0)
    return {"label": trained.class_names[int(index)], "prob": float(value)}


if __name__ == "__main__":
    print(f"serving on http://127.0.0.1:{sys.argv[2]}", flush=True)
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
