"""The report's image cards: which validation images the sample grid shows, each image's pictures
(the thumbnail, or what the model saw beside its Grad-CAM overlay), and the card's HTML.

Pictures are base64 PNGs inline in the page. Explaining is optional (`explain`, given by
run_report.py when it has the model): without it, or when it fails, the cards show thumbnails;
an image that cannot be read any more gets a card without a picture, never a failed report.
"""
from __future__ import annotations

import base64
import html
import io
import logging
from collections.abc import Callable

import numpy as np

from ..errors import UserError

logger = logging.getLogger(__name__)

SAMPLE_COUNT = 16
# (indices, classes) -> {index: (model input PNG, overlay PNG)} for the images it could explain
Explain = Callable[[list[int], list[int]], dict[int, tuple[str, str]]]


def choose_samples(correct: np.ndarray, count: int = SAMPLE_COUNT, seed: int = 0) -> list[int]:
    """A seeded draw of up to `count` images, half right and half wrong where there are enough of
    each (the rest from the other kind), in dataset order."""
    rng = np.random.default_rng(seed)
    right, wrong = (rng.permutation(np.flatnonzero(mask)) for mask in (correct, ~correct))
    take_wrong = min(len(wrong), max(count // 2, count - len(right)))
    chosen = [*wrong[:take_wrong], *right[:count - take_wrong]]
    return sorted(int(i) for i in chosen)


def image_pictures(indices: list[int], classes: np.ndarray, load_image,
                   explain: Explain | None) -> dict[int, list[str]]:
    """Each index's pictures: [model input, Grad-CAM overlay] when explained, else [thumbnail], or
    [] when the image cannot be read. `classes`: the class explained for each image of the set."""
    unique = list(dict.fromkeys(int(i) for i in indices))
    explained: dict[int, tuple[str, str]] = {}
    if explain is not None and unique:
        try:
            explained = explain(unique, [int(classes[i]) for i in unique])
        except (RuntimeError, ValueError) as error:  # an explanation is a bonus: the report still gets written
            logger.warning(f"no Grad-CAM in the report ({type(error).__name__}: {error})")
    pictures = {}
    for index in unique:
        if index in explained:
            pictures[index] = list(explained[index])
            continue
        try:
            pictures[index] = [thumbnail_png(load_image(index))]
        except (UserError, OSError) as error:
            logger.warning(f"the report shows no picture of image {index}: {error}")
            pictures[index] = []
    return pictures


def card(pictures: list[str], name: str, caption: str) -> str:
    """One figure: its pictures side by side and a caption (already HTML)."""
    name = html.escape(name)
    images = "".join(f"<img alt='{name}' title='{name}' src='data:image/png;base64,{data}'>" for data in pictures)
    if not pictures:
        images = f"<div class='missing' title='{name}'>image not readable</div>"
    wide = " class='pair'" if len(pictures) > 1 else ""
    return f"<figure{wide}><div class='pictures'>{images}</div><figcaption>{caption}</figcaption></figure>"


def grid_note(pictures: dict[int, list[str]], explained: str = "the predicted class") -> str:
    """What the two pictures of a card are, when any card has two."""
    if not any(len(p) > 1 for p in pictures.values()):
        return ""
    return ("<p class='note'>Left: the image as the model saw it (resized and cropped). Right: Grad-CAM for "
            f"{explained} (Selvaraju et al. 2017): red where the last convolutional stage found "
            "evidence for it, blue where little.</p>")


def thumbnail_png(image) -> str:
    """A base64 PNG thumbnail of at most 128 px, tiny images enlarged to 64 px (pixelated)."""
    image = image.convert("RGB")
    image.thumbnail((128, 128))
    if min(image.size) < 64:  # tiny images (CIFAR, digits): enlarge so a person can see them
        scale = 64 / min(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), resample=0)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def overlay_image(image: np.ndarray, cam: np.ndarray, alpha: float = 0.45):
    """`image` (H, W, 3 uint8) with the [0, 1] map `cam` (H, W) over it in matplotlib's jet colours."""
    from matplotlib import colormaps
    from PIL import Image

    heat = colormaps["jet"](np.clip(cam, 0.0, 1.0))[..., :3] * 255.0
    blended = (1 - alpha) * image.astype(np.float32) + alpha * heat
    return Image.fromarray(np.clip(blended, 0, 255).astype(np.uint8))
