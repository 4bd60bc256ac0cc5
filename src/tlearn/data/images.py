"""Open any real-world image file as an RGB PIL image, or say why it cannot be used.

Handles EXIF orientation, grayscale, 16-bit, palette and RGBA (composited on white),
CMYK, animated GIFs (first frame), and guards against decompression bombs.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ..errors import first_line

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
MAX_PIXELS = 100_000_000  # ~ 10k x 10k; larger files are refused as possible decompression bombs

# Never decode a partial file into a half-grey image: truncated files must fail loudly.
ImageFile.LOAD_TRUNCATED_IMAGES = False


def is_image_name(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def open_rgb(path: str | Path, decode_size: int | None = None) -> Image.Image:
    """Decode `path` to an upright RGB image; raises on unreadable files.

    `decode_size`: a JPEG at least twice that size on both sides is decoded at 1/2, 1/4 or 1/8
    scale (libjpeg's DCT scaling, Pillow's `draft`), never below `decode_size` x `decode_size`:
    the pipelines shrink it to that size anyway, and a 12-Mpx photo decodes several times faster.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as image:
            _check_size(image)
            if decode_size and image.format == "JPEG":
                image.draft(image.mode, (decode_size, decode_size))
            image.seek(0)  # animated GIF/WebP: the first frame
            image = ImageOps.exif_transpose(image)
            return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        image.load()
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grayscale: rescale to 8 bit
        array = np.asarray(image, dtype=np.float64)
        peak = array.max() if array.max() > 255 else 255.0
        return Image.fromarray((array / peak * 255).astype(np.uint8), "L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")  # L, P, CMYK, YCbCr, 1, F ...


def _check_size(image: Image.Image) -> None:
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise ValueError(f"{width}x{height} pixels is over the {MAX_PIXELS:,}-pixel limit "
                         "(possible decompression bomb)")


def unusable_reason(path: str | Path) -> str | None:
    """None when `path` decodes fully; otherwise a short reason. Cheap: JPEGs decode scaled."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                _check_size(image)
                image.draft("RGB", (64, 64))  # JPEG: DCT-scaled decode still reads every byte
                image.load()
        return None
    except UnidentifiedImageError:
        return "not an image (cannot identify format)"
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as error:
        return f"unreadable image ({first_line(error)})"
