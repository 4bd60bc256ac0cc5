"""What a model expects of its input, read from its weights' metadata.

The fields mean what they mean in torchvision's `ImageClassification` transform: resize the
shorter side to `resize_size`, center-crop `crop_size`, scale to [0, 1], normalise.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    resize_size: int
    crop_size: int
    interpolation: str  # "bilinear" | "bicubic" | "nearest"
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    # True: resize the whole image to crop_size x crop_size (no crop, aspect ratio not kept),
    # for images smaller than the input; see for_small_images.
    whole_image: bool = False

    def with_image_size(self, size: int | None) -> Preprocessing:
        """Crop to `size`, keeping the weights' crop ratio (e.g. 224/256)."""
        if size is None or size == self.crop_size:
            return self
        if self.whole_image:
            return replace(self, crop_size=size, resize_size=size)
        ratio = self.crop_size / self.resize_size
        return replace(self, crop_size=size, resize_size=int(round(size / ratio)))

    def for_small_images(self) -> Preprocessing:
        """Resize the whole image to the input size, bilinear, no crop: for images smaller than it.

        The weights' recipe (resize to crop / crop_pct, center-crop, often bicubic) is made for
        photos larger than the input. When a thumbnail is enlarged, the crop only throws away
        content, and bicubic overshoot sharpens JPEG ringing into the features: on CIFAR-10 with
        Lite0 at 224 px, the linear probe gained 5-9 points (README, Performance). Whole means
        whole: a non-square thumbnail is stretched to the square input, not cropped.
        """
        return replace(self, resize_size=self.crop_size, interpolation="bilinear", whole_image=True)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["mean"], data["std"] = list(self.mean), list(self.std)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        return cls(
            resize_size=int(data["resize_size"]),
            crop_size=int(data["crop_size"]),
            interpolation=str(data["interpolation"]),
            mean=tuple(float(v) for v in data["mean"]),
            std=tuple(float(v) for v in data["std"]),
            whole_image=bool(data.get("whole_image", False)),
        )
