"""Running a detector on images: PyTorch models and exported ONNX models -> pixel detections.

The test-time recipe is RetinaFace's (the one the WIDER numbers of V1 were produced with):
BGR float minus the mean (104, 117, 123), the image at its original size (or resized so that its
longer side is N), priors for that exact input size, boxes decoded with :mod:`edge.anchors`,
detections scoring above 0.02 kept, NMS at IoU 0.4 with ``+1``-pixel areas on pixel boxes, no
top-k cap. Boxes come back as ``x1, y1, x2, y2`` in pixels of the original image.

A model is wrapped in a :class:`Runner`: a callable from an input blob ``(1, 3, H, W)`` float32 to
``(loc (A, 4), face score (A,), landmarks (A, 2K) or None)``, plus the pre-processing it expects.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge.anchors import decode_boxes, decode_landmarks, nms, prior_boxes
from edge.contract import METADATA_KEY, InputSpec, ModelMeta, PriorSpec
from edge.errors import ConfigError, DatasetError, ModelError
from trainer.data.dataset import DataConfig
from trainer.data.labels import NUM_LANDMARKS
from trainer.data.pseudo import Detect
from trainer.data.wider import WiderGroundTruth
from trainer.eval.widerface import Predictions

CONF_THRESHOLD = 0.02
NMS_THRESHOLD = 0.4

RawOutputs = tuple[np.ndarray, np.ndarray, np.ndarray | None]


@dataclass
class Runner:
    """A model ready to run. ``fixed_size`` is ``(W, H)`` when the graph only accepts that size
    (images are then stretched to it and boxes mapped back); ``None`` for any input size."""

    name: str
    forward: Callable[[np.ndarray], RawOutputs]
    input: InputSpec = field(default_factory=lambda: InputSpec(width=640, height=640, dynamic=True))
    priors: PriorSpec = field(default_factory=PriorSpec)
    fixed_size: tuple[int, int] | None = None
    model: Any = None  # the nn.Module or onnx.ModelProto behind it, for parameter / MAC counts


def parse_scale(text: str | int | None) -> int | None:
    """``"original"`` (or None) -> None; ``"640"`` -> 640 (the longer side in pixels)."""
    if text is None or str(text).strip().lower() == "original":
        return None
    try:
        value = int(str(text))
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigError(f"--scale must be 'original' or a positive integer, got {text!r}")
    return value


def _softmax_face(conf: np.ndarray) -> np.ndarray:
    z = conf - conf.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e[..., 1] / e.sum(axis=-1)).astype(np.float32)


# ----------------------------------------------------------------------------- PyTorch


def torch_runner(model: Any, name: str = "torch") -> Runner:
    """Wrap an ``nn.Module`` whose ``forward(x)`` returns ``(loc, conf logits, landmarks)``."""
    import torch

    model.eval()
    first = next(iter(model.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")  # e.g. a teacher on the GPU

    def forward(blob: np.ndarray) -> RawOutputs:
        with torch.inference_mode():
            outs = model(torch.from_numpy(blob).to(device))[:3]
        loc, conf, ldm = (t[0].float().cpu().numpy() for t in outs)
        return loc, _softmax_face(conf), ldm

    return Runner(name=name, forward=forward, model=model)


def load_torch_model(path: str | Path, arch: str | None = None) -> tuple[Any, str]:
    """A ``.pth``/``.pt`` file -> (model in eval mode, arch): :func:`trainer.models.files.load_model`
    (the file says which network it holds; ``arch`` names the network of a bare Nano-B state dict)."""
    from trainer.models.files import load_model

    return load_model(path, arch)


# ----------------------------------------------------------------------------- ONNX


def _onnx_roles(session: Any, meta: ModelMeta | None, path: Path) -> dict[str, str]:
    """Map loc/conf/landmarks to output names: from the metadata, else by last dimension 4/2/2K."""
    names = [o.name for o in session.get_outputs()]
    if meta is not None:
        roles = {r: n for r, n in meta.outputs.items() if n in names}
        if "loc" not in roles or "conf" not in roles:
            raise ModelError(f"{path}: metadata outputs {meta.outputs} do not name graph outputs {names}")
        return roles
    roles = {}
    for out in session.get_outputs():
        last = out.shape[-1] if out.shape else None
        role = {4: "loc", 2: "conf"}.get(last) if isinstance(last, int) else None
        if role is None and isinstance(last, int) and last >= 6 and last % 2 == 0:
            role = "landmarks"
        if role and role not in roles:
            roles[role] = out.name
    if "loc" not in roles or "conf" not in roles:
        raise ModelError(
            f"{path}: no FeatherFace metadata and outputs {names} are not RetinaFace-style "
            "loc (.., 4) / conf (.., 2)"
        )
    return roles


def onnx_runner(path: str | Path, threads: int = 0) -> Runner:
    """An ONNX Runtime session on ``path``; the DESIGN §1 metadata is used when present.

    Peers without it are read as RetinaFace-style graphs (BGR minus mean, default priors); their
    conf output is taken as probabilities when its rows sum to 1, else as logits.
    """
    import onnx
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    try:
        proto = onnx.load(str(path))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        session = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"cannot load ONNX model {path}: {reason}") from exc
    props = {p.key: p.value for p in proto.metadata_props}
    meta = ModelMeta.from_json(props[METADATA_KEY], str(path)) if METADATA_KEY in props else None
    roles = _onnx_roles(session, meta, path)
    input_name = session.get_inputs()[0].name
    order = [roles["loc"], roles["conf"]] + ([roles["landmarks"]] if "landmarks" in roles else [])
    softmax_done = meta.conf_softmax if meta is not None else None

    def forward(blob: np.ndarray) -> RawOutputs:
        outs = session.run(order, {input_name: blob})
        loc, conf = outs[0][0], outs[1][0]
        done = softmax_done
        if done is None:  # a peer without metadata: probabilities sum to one per anchor
            done = bool(conf.min() >= 0 and np.allclose(conf.sum(axis=-1), 1.0, atol=1e-3))
        score = conf[:, 1].astype(np.float32) if done else _softmax_face(conf)
        return loc, score, outs[2][0] if len(outs) > 2 else None

    if meta is not None:
        spec, priors = meta.input, meta.priors
        fixed = None if spec.dynamic else (spec.width, spec.height)
    else:
        spec, priors = InputSpec(width=640, height=640, dynamic=True), PriorSpec()
        shape = session.get_inputs()[0].shape
        dims = shape[2:] if len(shape) == 4 else []
        fixed = (dims[1], dims[0]) if all(isinstance(d, int) for d in dims) and dims else None
    name = meta.name if meta is not None else path.stem
    return Runner(name=name, forward=forward, input=spec, priors=priors, fixed_size=fixed, model=proto)


# ----------------------------------------------------------------------------- detection


def load_runner(path: str | Path, arch: str | None = None) -> Runner:
    """``.onnx`` -> ONNX Runtime; anything else is read as a PyTorch checkpoint."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        return onnx_runner(path)
    model, arch_name = load_torch_model(path, arch)
    return torch_runner(model, name=arch_name)


def preprocess(image: np.ndarray, runner: Runner, scale: int | None) -> tuple[np.ndarray, float, float]:
    """BGR uint8 image -> (blob ``(1, 3, h, w)`` float32, x factor, y factor) from input to original."""
    h0, w0 = image.shape[:2]
    if runner.fixed_size is not None:
        size = runner.fixed_size
    elif scale is None:
        size = (w0, h0)
    else:
        r = scale / max(h0, w0)
        size = (max(1, round(w0 * r)), max(1, round(h0 * r)))
    img = image if size == (w0, h0) else cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
    if runner.input.color == "RGB":
        img = img[:, :, ::-1]
    x = img.astype(np.float32)
    x -= np.asarray(runner.input.mean, dtype=np.float32)
    if any(s != 1.0 for s in runner.input.std):
        x /= np.asarray(runner.input.std, dtype=np.float32)
    blob = np.ascontiguousarray(x.transpose(2, 0, 1)[None])
    return blob, w0 / size[0], h0 / size[1]


def detect(
    runner: Runner,
    image: np.ndarray,
    scale: int | None = None,
    conf_threshold: float = CONF_THRESHOLD,
    nms_threshold: float = NMS_THRESHOLD,
) -> np.ndarray:
    """Detections ``(N, 5 + 2K)``: ``x1, y1, x2, y2, score, landmarks...`` in original-image pixels,
    highest score first."""
    blob, fx, fy = preprocess(image, runner, scale)
    h, w = blob.shape[2:]
    p = runner.priors
    priors = prior_boxes(w, h, p.min_sizes, p.steps, p.clip)
    loc, score, ldm = runner.forward(blob)
    if len(loc) != len(priors):
        raise ModelError(f"{runner.name}: {len(loc)} anchors for a {w}x{h} input, priors give {len(priors)}")
    idx = np.flatnonzero(score > conf_threshold)
    to_px = np.array([w * fx, h * fy], dtype=np.float64)
    boxes = decode_boxes(loc[idx].astype(np.float64), priors[idx].astype(np.float64), p.variances)
    boxes *= np.tile(to_px, 2)
    points = np.zeros((len(idx), 0))
    if ldm is not None:
        points = decode_landmarks(ldm[idx].astype(np.float64), priors[idx].astype(np.float64), p.variances)
        points *= np.tile(to_px, points.shape[1] // 2)
    keep = nms(boxes, score[idx].astype(np.float64), nms_threshold, plus_one=1.0)
    return np.concatenate([boxes[keep], score[idx][keep, None].astype(np.float64), points[keep]], axis=1)


def to_wider(dets: np.ndarray) -> np.ndarray:
    """Corner detections -> WIDER rows ``x, y, w, h, score``."""
    out = np.empty((len(dets), 5), dtype=np.float64)
    out[:, :2] = dets[:, :2]
    out[:, 2:4] = dets[:, 2:4] - dets[:, :2]
    out[:, 4] = dets[:, 4]
    return out


def read_image(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DatasetError(f"cannot read image {path}")
    return image


def predict_wider(
    runner: Runner,
    gt: WiderGroundTruth,
    images_dir: str | Path,
    scale: int | None = None,
    progress: bool = True,
) -> Predictions:
    """Run ``runner`` over every image of ``gt`` (``images_dir/<event>/<name>.jpg``)."""
    from tqdm import tqdm

    images_dir = Path(images_dir)
    preds: Predictions = {}
    # disable=None: a bar on a terminal only; a log file or journal gets no carriage-return flood.
    for img in tqdm(gt.images, desc=f"predict {runner.name}", unit="img", disable=None if progress else True):
        path = images_dir / img.relpath
        if not path.is_file():
            raise DatasetError(f"WIDER val image missing: {path}")
        preds[(img.event, img.name)] = to_wider(detect(runner, read_image(path), scale))
    return preds


def runner_detect(
    runner: object, scale: int | None = 640, conf_threshold: float = 0.02, nms_threshold: float = 0.4
) -> Detect:
    """Adapt an evaluation runner (:func:`trainer.eval.predict.load_runner`: a ``.pth`` V1 / Nano-B
    checkpoint or an ``.onnx`` file) to the ``detect`` callable; ``scale`` resizes the longer side."""

    def fn(image_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        d = detect(runner, image_bgr, scale, conf_threshold, nms_threshold)  # type: ignore[arg-type]
        ldm = d[:, 5 : 5 + 2 * NUM_LANDMARKS] if d.shape[1] >= 5 + 2 * NUM_LANDMARKS else None
        return d[:, :4], d[:, 4], ldm

    return fn


def teacher_detect(path: str | Path, scale: int | None = 640) -> Detect:
    """The ``detect`` callable of a teacher model file (``.pth`` checkpoint or ``.onnx``)."""
    return runner_detect(load_runner(path), scale)


def pseudo_teacher(cfg: DataConfig) -> Detect | None:
    """The teacher a data config names for its ``pseudo_images`` (``data.pseudo_teacher``), as the
    ``detect`` callable :func:`trainer.data.dataset.build_dataset` takes; None when it names none."""
    if not (cfg.pseudo_images and cfg.pseudo_teacher):
        return None
    return teacher_detect(cfg.pseudo_teacher, cfg.pseudo_scale)
