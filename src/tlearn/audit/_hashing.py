"""What the audit reads from each image's pixels: a content hash, a perceptual hash, its shape.

The content hash is of the decoded pixels (size and RGB bytes), not of the file: the same
image saved twice, as PNG and as a lossless copy under another name, hashes the same.

The perceptual hash is the 63-bit DCT hash (pHash): the image in grayscale at 32x32, its 2-D
DCT, the top-left 8x8 block of low frequencies without the DC term, one bit per coefficient
(above the block's median or not). Re-encoding, resizing and slight crops move few bits;
measured on 32 px CIFAR copies it separates copies from unrelated look-alikes where backbone
features alone do not (README, "Auditing a data set").

A crop shifts the picture under the hash and moves many bits (10-22 of 63 for 2-4 px cut from
32 px CIFAR images), so each image also gets the hashes of nine crops at 90 % of its sides (a
3x3 grid of positions): a cropped copy lies close to one of its original's crops (2-12 bits).
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy.fft import dctn

from ..data import Samples

HASH_SIDE = 32  # the grayscale image the DCT is taken of
BLOCK = 8  # low-frequency block kept: 8x8 less the DC term = 63 bits
CROP_KEEP = 0.9  # the side share the crop variants keep
GRAY_SPREAD = 2.0  # mean |channel - channel mean| (0..255) under which an RGB image counts as gray


@dataclass
class ImageFacts:
    """Per image, in sample order."""

    content_hashes: list[str]
    phash_bits: np.ndarray  # (N, 63) uint8, 0/1: the whole image
    crop_bits: np.ndarray  # (N, 9, 63): the crop variants
    widths: np.ndarray
    heights: np.ndarray
    grayscale: np.ndarray  # bool


def perceptual_hash_bits(image: Image.Image) -> np.ndarray:
    """The 63 pHash bits of one image, as a uint8 0/1 vector."""
    gray = image.convert("L").resize((HASH_SIDE, HASH_SIDE), Image.Resampling.BILINEAR, reducing_gap=2.0)
    coefficients = dctn(np.asarray(gray, dtype=np.float64), type=2, norm="ortho")
    block = coefficients[:BLOCK, :BLOCK].ravel()[1:]  # without the DC term (the mean brightness)
    return (block > np.median(block)).astype(np.uint8)


def crop_hash_bits(image: Image.Image) -> np.ndarray:
    """(9, 63) pHash bits of crops keeping CROP_KEEP of each side, at the corners, edges and centre."""
    width, height = image.size
    crop_width, crop_height = width * CROP_KEEP, height * CROP_KEEP
    rows = []
    for share_x in (0.0, 0.5, 1.0):
        for share_y in (0.0, 0.5, 1.0):
            left, top = share_x * (width - crop_width), share_y * (height - crop_height)
            rows.append(perceptual_hash_bits(image.crop((left, top, left + crop_width, top + crop_height))))
    return np.stack(rows)


def content_hash(image: Image.Image) -> str:
    """SHA-256 of the decoded RGB pixels and their shape."""
    pixels = np.asarray(image.convert("RGB"))
    digest = hashlib.sha256(f"{pixels.shape}".encode())
    digest.update(np.ascontiguousarray(pixels).tobytes())
    return digest.hexdigest()


def is_grayscale(image: Image.Image) -> bool:
    """True when the three channels (nearly) agree: a gray picture, whatever its file's mode."""
    small = image.convert("RGB")
    if max(small.size) > 128:  # a thumbnail answers as well, and a photo decodes once anyway
        small = small.copy()
        small.thumbnail((128, 128))
    pixels = np.asarray(small, dtype=np.float32)
    return float(np.abs(pixels - pixels.mean(axis=2, keepdims=True)).mean()) < GRAY_SPREAD


def _facts_of(samples: Samples, index: int) -> tuple:
    image = samples.load(index)  # full decode: the content hash must see every pixel
    return (content_hash(image), perceptual_hash_bits(image), crop_hash_bits(image), image.width, image.height,
            is_grayscale(image))


def image_facts(samples: Samples) -> ImageFacts:
    """Hashes and shapes of every sample (decoded in threads: Pillow and NumPy release the GIL)."""
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
        rows = list(pool.map(lambda i: _facts_of(samples, i), range(len(samples))))
    size = BLOCK * BLOCK - 1
    bits = np.stack([row[1] for row in rows]) if rows else np.zeros((0, size), np.uint8)
    crops = np.stack([row[2] for row in rows]) if rows else np.zeros((0, 9, size), np.uint8)
    column = lambda k, dtype: np.array([row[k] for row in rows], dtype=dtype)  # noqa: E731
    return ImageFacts([row[0] for row in rows], bits, crops, column(3, np.int64), column(4, np.int64),
                      column(5, bool))


def signs(bits: np.ndarray) -> np.ndarray:
    """0/1 bits as -1/+1 float32: the dot product of two rows is (length - 2 x Hamming distance)."""
    return bits.astype(np.float32) * 2 - 1


def hamming_block(bits_a: np.ndarray, bits_b: np.ndarray) -> np.ndarray:
    """All Hamming distances between two sets of 0/1 bit rows, by one matrix product."""
    return np.rint((bits_a.shape[-1] - signs(bits_a) @ signs(bits_b).T) / 2).astype(np.int32)
