"""What a request to /predict or /gradcam may hold, read and checked before any image reaches the
model: a bad request gets a 4xx JSON error naming its problem and costs the server nothing else.

Images come as multipart files (field `files`, or `file`) or as the raw bytes of one image; `top_k`
(and /gradcam's `label`) as a form field or a query parameter. The body is read with a limit
(`--max-body-mb`), whether or not its length was announced.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field

import torch
from PIL import Image, UnidentifiedImageError
from starlette.datastructures import UploadFile
from starlette.requests import Request

from ..data import open_rgb
from ..errors import first_line

FILE_FIELDS = ("files", "file")
VALUE_FIELDS = ("top_k", "label")
MAX_IMAGES = 64  # a request's images; more is a job for `tlearn predict`
DRAIN_FACTOR = 4  # an oversized body is read (and dropped) up to this many limits, so the client hears the 413


class RequestError(Exception):
    """A bad request: the HTTP status and a one-line message for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Upload:
    images: list[tuple[str, bytes]] = field(default_factory=list)  # (file name, bytes)
    values: dict[str, str] = field(default_factory=dict)  # top_k, label as sent


async def read_upload(request: Request, max_body_bytes: int, allowed_values: tuple[str, ...]) -> Upload:
    """The images and values of a request; RequestError for an empty, oversized or odd one."""
    unknown = sorted(set(request.query_params) - set(allowed_values))
    if unknown:
        raise RequestError(400, f"unknown query parameter {unknown[0]!r}: expected {', '.join(allowed_values)}")
    body = await _read_body(request, max_body_bytes)
    if not body:
        raise RequestError(400, "empty body: send images as multipart files ('files') or one image's raw bytes")
    upload = Upload(values=dict(request.query_params))
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        request._body = body  # starlette's form parser reads the body we already hold (and limited)
        try:
            form = await request.form(max_files=MAX_IMAGES + 1, max_fields=len(allowed_values) + 1)
        except Exception as error:  # malformed multipart, too many parts
            raise RequestError(400, f"unreadable multipart body ({first_line(error, 100)})") from None
        for name, value in form.multi_items():
            await _add_part(upload, name, value, allowed_values)
        await form.close()
    else:
        upload.images.append(("image", body))
    if not upload.images:
        raise RequestError(400, "no image in the request: send files in the multipart field 'files'")
    if len(upload.images) > MAX_IMAGES:
        raise RequestError(413, f"{len(upload.images)} images in one request; at most {MAX_IMAGES}")
    return upload


async def _add_part(upload: Upload, name: str, value, allowed_values: tuple[str, ...]) -> None:
    if isinstance(value, UploadFile):
        if name not in FILE_FIELDS:
            raise RequestError(400, f"unknown field {name!r}: send images in the field 'files'")
        upload.images.append((value.filename or f"image {len(upload.images) + 1}", await value.read()))
    elif name in allowed_values:
        upload.values[name] = value
    else:
        raise RequestError(400, f"unknown field {name!r}: expected files, {', '.join(allowed_values)}")


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, at most `limit` bytes. An oversized one is read on and dropped (up to a bound), so the
    client is not cut off while it still sends, and hears the 413."""
    announced = request.headers.get("content-length", "")
    too_large = announced.isdigit() and int(announced) > limit
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        too_large = too_large or size > limit
        if too_large and size > DRAIN_FACTOR * limit:
            break
        if not too_large:
            chunks.append(chunk)
    if too_large:
        raise RequestError(413, f"the body is over the server's limit of {limit / 2 ** 20:g} MB (--max-body-mb)")
    return b"".join(chunks)


def int_value(upload: Upload, name: str, default: int, low: int, high: int) -> int:
    """An integer field within [low, high]; 422 otherwise."""
    text = upload.values.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise RequestError(422, f"{name} must be an integer, got {text[:40]!r}") from None
    if not low <= value <= high:
        raise RequestError(422, f"{name} must be between {low} and {high}, got {value}")
    return value


def decode(name: str, data: bytes, transform) -> torch.Tensor:
    """One image's bytes -> its uint8 (3, H, W) crop; RequestError naming what is wrong with it."""
    try:
        return transform(open_rgb(io.BytesIO(data), transform.decode_size))
    except UnidentifiedImageError:
        raise RequestError(400, f"{name} is not an image (cannot identify its format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning, ValueError) as error:
        raise RequestError(413, f"{name} is too large: {first_line(error, 120)}") from None
    except Exception as error:  # truncated or corrupt data (OSError, SyntaxError from Pillow's parsers)
        raise RequestError(400, f"{name} cannot be decoded ({first_line(error, 120)})") from None

