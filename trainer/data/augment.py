"""Training augmentation as RetinaFace trains (and the V1 weights expect), in NumPy + OpenCV.

Order: random square crop (scale 0.3-1.0 of the short side, faces kept by centre) -> photometric
distortion (brightness, contrast, saturation, hue) -> horizontal mirror (landmarks swap left/right:
eyes 0<->1, mouth corners 3<->4) -> pad to square when no crop was found -> resize to ``img_dim``
-> subtract the BGR mean (104, 117, 123), no scaling, HWC -> CHW float32.

Coordinates: inputs in pixels, ``boxes (N, 4)`` ``x1, y1, x2, y2``; ``landmarks (N, 10)`` with ``-1``
for a face without landmarks. Outputs are normalised to ``[0, 1]`` of the output image; missing
landmarks stay ``-1``. Every random draw comes from the ``np.random.Generator`` passed in, so a
sample is reproducible from its seed whatever the worker layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

BGR_MEAN: tuple[float, float, float] = (104.0, 117.0, 123.0)
CROP_SCALES: tuple[float, ...] = (0.3, 0.45, 0.6, 0.8, 1.0)
# Landmark order: left eye, right eye, nose, left mouth, right mouth; a mirror swaps the pairs.
MIRROR_ORDER: tuple[int, ...] = (1, 0, 2, 4, 3)
_INTERPOLATIONS = (cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_AREA, cv2.INTER_NEAREST, cv2.INTER_LANCZOS4)


def random_crop(
    image: np.ndarray,
    boxes: np.ndarray,
    ldm: np.ndarray,
    rng: np.random.Generator,
    tries: int = 250,
    scales: tuple[float, ...] = CROP_SCALES,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """Square crop containing at least one whole face; faces whose centre falls outside are dropped.
    The crop's side is one of ``scales`` (drawn uniformly) times the image's short side.

    Returns ``(image, boxes, landmarks, cropped)``; ``cropped`` is False when no crop was found
    (the caller then pads to a square instead). Boxes are clipped to the crop; landmarks shift with it.
    """
    height, width = image.shape[:2]
    short = min(width, height)
    valid = ldm[:, 0] >= 0
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    for _ in range(tries):
        size = int(scales[rng.integers(len(scales))] * short)
        if size < 2:
            continue
        left = 0 if width == size else int(rng.integers(width - size))
        top = 0 if height == size else int(rng.integers(height - size))
        roi = np.array([left, top, left + size, top + size], dtype=np.float32)
        inside = (boxes[:, :2] >= roi[:2]).all(1) & (boxes[:, 2:] <= roi[2:]).all(1)
        if not inside.any():
            continue
        keep = ((roi[:2] < centres) & (centres < roi[2:])).all(axis=1)
        b = boxes[keep].copy()
        b[:, :2] = np.maximum(b[:, :2], roi[:2]) - roi[:2]
        b[:, 2:] = np.minimum(b[:, 2:], roi[2:]) - roi[:2]
        lm = ldm[keep].copy().reshape(-1, 5, 2)
        lm = np.clip(lm - roi[:2], 0, size)
        # RetinaFace clips missing (-1) landmarks to 0 here; restore the marker so the loss skips them.
        lm[~valid[keep]] = -1
        crop = image[top : top + size, left : left + size]
        return crop, b, lm.reshape(-1, 10), True
    return image, boxes, ldm, False


def distort(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Photometric distortion: brightness, contrast, saturation, hue, each with probability 1/2."""
    img = image.astype(np.float32)

    def brightness_contrast(x: np.ndarray) -> np.ndarray:
        if rng.random() < 0.5:
            x += rng.uniform(-32, 32)
        if rng.random() < 0.5:
            x *= rng.uniform(0.5, 1.5)
        return np.clip(x, 0, 255)

    contrast_first = rng.random() < 0.5
    if contrast_first:
        img = brightness_contrast(img)
    hsv = cv2.cvtColor(img.astype(np.uint8), cv2.COLOR_BGR2HSV).astype(np.float32)
    if rng.random() < 0.5:
        hsv[:, :, 1] = np.clip(hsv[:, :, 1] * rng.uniform(0.5, 1.5), 0, 255)
    if rng.random() < 0.5:
        hsv[:, :, 0] = (hsv[:, :, 0] + rng.integers(-18, 19)) % 180  # OpenCV hue is 0..179
    img = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR).astype(np.float32)
    if not contrast_first:
        img = brightness_contrast(img)
    return img.astype(np.uint8)


def mirror(
    image: np.ndarray, boxes: np.ndarray, ldm: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flip horizontally (pixel coordinates): x -> W - x, and swap left/right landmarks."""
    width = image.shape[1]
    out = np.ascontiguousarray(image[:, ::-1])
    b = boxes.copy()
    b[:, 0], b[:, 2] = width - boxes[:, 2], width - boxes[:, 0]
    lm = ldm.copy().reshape(-1, 5, 2)
    valid = lm[:, 0, 0] >= 0
    lm[:, :, 0] = width - lm[:, :, 0]
    lm = lm[:, list(MIRROR_ORDER)]
    lm[~valid] = -1
    return out, b, lm.reshape(-1, 10)


def pad_to_square(image: np.ndarray, fill: tuple[float, float, float] = BGR_MEAN) -> np.ndarray:
    """Pad bottom/right with the mean colour so boxes keep their pixel coordinates."""
    h, w = image.shape[:2]
    if h == w:
        return image
    side = max(h, w)
    out = np.empty((side, side, 3), dtype=image.dtype)
    out[:] = np.asarray(fill, dtype=image.dtype)
    out[:h, :w] = image
    return out


def to_input(image: np.ndarray, dim: int | None = None, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """BGR uint8 HWC -> float32 CHW with the BGR mean subtracted (optionally resized to dim x dim)."""
    if dim is not None and image.shape[:2] != (dim, dim):
        image = cv2.resize(image, (dim, dim), interpolation=interpolation)
    return (image.astype(np.float32) - np.asarray(BGR_MEAN, dtype=np.float32)).transpose(2, 0, 1).copy()


def normalise(boxes: np.ndarray, ldm: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel boxes / landmarks -> fractions of the image; ``-1`` landmarks stay ``-1``."""
    scale = np.array([width, height], dtype=np.float32)
    b = (boxes.reshape(-1, 2, 2) / scale).reshape(-1, 4).astype(np.float32)
    valid = ldm[:, 0] >= 0
    lm = (ldm.reshape(-1, 5, 2) / scale).reshape(-1, 10).astype(np.float32)
    lm[~valid] = -1
    return b, lm


@dataclass(frozen=True)
class TrainTransform:
    """The RetinaFace training transform (see module doc); each step can be switched off."""

    img_dim: int = 640
    crop: bool = True
    distort: bool = True
    mirror: bool = True
    # Crop sides as fractions of the short side. RetinaFace's set suits 640-px inputs; with smaller
    # inputs the large crops shrink every face (a 1024-px WIDER image cropped whole to 320 px shows a
    # 16-px face at 7 px), so a recipe can keep to the smaller crops (data.crop_scales).
    scales: tuple[float, ...] = CROP_SCALES

    def __call__(
        self, image: np.ndarray, boxes: np.ndarray, ldm: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """-> ``(CHW float32 input, boxes (N, 4) normalised, landmarks (N, 10) normalised / -1)``."""
        cropped = False
        if self.crop:
            image, boxes, ldm, cropped = random_crop(image, boxes, ldm, rng, scales=self.scales)
        if self.distort:
            image = distort(image, rng)
        if self.mirror and rng.random() < 0.5:
            image, boxes, ldm = mirror(image, boxes, ldm)
        if not cropped:
            image = pad_to_square(image)
        h, w = image.shape[:2]
        boxes, ldm = normalise(boxes, ldm, w, h)
        interp = cv2.INTER_LINEAR
        if self.distort:  # RetinaFace also draws the resize interpolation at random
            interp = _INTERPOLATIONS[int(rng.integers(len(_INTERPOLATIONS)))]
        return to_input(image, self.img_dim, interp), boxes, ldm


@dataclass(frozen=True)
class EvalTransform:
    """Validation: pad to a square and resize to ``img_dim``, no randomness (boxes stay aligned)."""

    img_dim: int = 640

    def __call__(
        self, image: np.ndarray, boxes: np.ndarray, ldm: np.ndarray, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        image = pad_to_square(image)
        h, w = image.shape[:2]
        boxes, ldm = normalise(boxes, ldm, w, h)
        return to_input(image, self.img_dim), boxes, ldm
