"""Session fixtures for the edge tests: real contract models, built once per session.

- ``tiny_onnx`` / ``tiny_ir``: a small randomly initialised conv net exported with torch to ONNX and
  converted to OpenVINO IR, both carrying the contract. Its class head is wired to the pooled image
  brightness (face logit = +k * brightness), so bright squares on a dark frame are "faces" at known
  places: detections are meaningful without any training, and need no ../shared.
- ``retinaface_onnx``: a copy of ../shared/weights/peers/retinaface_mbnet0.25.onnx with the contract
  added; it finds real faces in ../shared/data/photos (skipped when ../shared is absent).
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from edge.contract import METADATA_KEY, InputSpec, ModelMeta, PriorSpec
from tests.shared_paths import need_shared

TINY_W, TINY_H = 128, 96
TINY_STEPS = (8, 16, 32)


def tiny_meta(**overrides: object) -> ModelMeta:
    fields: dict[str, object] = {
        "name": "tiny-test",
        "version": "0.0.1",
        "input": InputSpec(
            width=TINY_W, height=TINY_H, color="RGB", mean=(127.5, 127.5, 127.5), std=(127.5, 127.5, 127.5)
        ),
        "priors": PriorSpec(),
        "outputs": {"loc": "loc", "conf": "conf", "landmarks": "landmarks"},
        "conf_softmax": False,
        "provenance": {"built_by": "tests/edge/conftest.py"},
    }
    fields.update(overrides)
    return ModelMeta(**fields)  # type: ignore[arg-type]


def attach_meta(onnx_path: Path, out: Path, meta: ModelMeta | None) -> Path:
    """Copy ``onnx_path`` to ``out`` with ``meta`` in metadata_props (``None``: strip it)."""
    import onnx

    model = onnx.load(str(onnx_path))
    keep = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    if meta is not None:
        entry = model.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, meta.to_json()
    onnx.save(model, str(out))
    return out


def _build_tiny_torch():
    import torch
    from torch import nn
    from torch.nn import functional as F

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 4, 3, padding=1)
            self.loc = nn.ModuleList(nn.Conv2d(5, 2 * 4, 1) for _ in TINY_STEPS)
            self.conf = nn.ModuleList(nn.Conv2d(5, 2 * 2, 1) for _ in TINY_STEPS)
            self.ldm = nn.ModuleList(nn.Conv2d(5, 2 * 10, 1) for _ in TINY_STEPS)
            with torch.no_grad():
                for head in self.conf:
                    # Logits per anchor: background = -4 * brightness, face = +4 * brightness.
                    head.weight.zero_()
                    head.bias.zero_()
                    head.weight[0::2, 4] = -4.0
                    head.weight[1::2, 4] = 4.0
                for head in (*self.loc, *self.ldm):
                    head.weight.mul_(0.1)

        def forward(self, x):
            f = torch.cat([torch.relu(self.stem(x)) * 0.1, x.mean(1, keepdim=True)], 1)
            locs, confs, ldms = [], [], []
            for i, s in enumerate(TINY_STEPS):
                p = F.avg_pool2d(f, s, s)
                for head, acc, k in (
                    (self.loc[i], locs, 4),
                    (self.conf[i], confs, 2),
                    (self.ldm[i], ldms, 10),
                ):
                    acc.append(head(p).permute(0, 2, 3, 1).reshape(x.shape[0], -1, k))
            return torch.cat(locs, 1), torch.cat(confs, 1), torch.cat(ldms, 1)

    torch.manual_seed(0)
    return Tiny().eval()


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_plain_onnx(model_dir: Path) -> Path:
    """The tiny net exported to ONNX **without** the contract."""
    import torch

    net = _build_tiny_torch()
    out = model_dir / "tiny-plain.onnx"
    with warnings.catch_warnings():  # the legacy exporter is deprecated, and exactly what a tiny net needs
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (torch.zeros(1, 3, TINY_H, TINY_W),),
            str(out),
            input_names=["input"],
            output_names=["loc", "conf", "landmarks"],
            opset_version=17,
            dynamo=False,
        )
    return out


@pytest.fixture(scope="session")
def tiny_onnx(tiny_plain_onnx: Path, model_dir: Path) -> Path:
    return attach_meta(tiny_plain_onnx, model_dir / "tiny.onnx", tiny_meta())


@pytest.fixture(scope="session")
def tiny_ir(tiny_onnx: Path, model_dir: Path) -> Path:
    """The same net as OpenVINO IR (FP32) with the contract in rt_info."""
    import openvino as ov

    model = ov.convert_model(str(tiny_onnx))
    model.set_rt_info(tiny_meta().to_json(), METADATA_KEY)
    xml = model_dir / "tiny.xml"
    ov.save_model(model, str(xml), compress_to_fp16=False)
    return xml


def retinaface_meta() -> ModelMeta:
    """RetinaFace-mnet0.25 as the peer table describes it: BGR - (104,117,123), any size, softmax inside."""
    return ModelMeta(
        name="retinaface-mnet0.25",
        version="peer",
        input=InputSpec(width=640, height=480, dynamic=True),
        outputs={"loc": "loc", "conf": "conf", "landmarks": "iou"},
        conf_softmax=True,
        provenance={"source": "../shared/weights/peers/retinaface_mbnet0.25.onnx"},
    )


@pytest.fixture(scope="session")
def retinaface_onnx(model_dir: Path) -> Path:
    src = need_shared("weights/peers/retinaface_mbnet0.25.onnx")
    return attach_meta(src, model_dir / "retinaface.onnx", retinaface_meta())


@pytest.fixture(scope="session")
def photos() -> Path:
    return need_shared("data/photos")


def bright_squares(squares: list[tuple[int, int, int]], w: int = 256, h: int = 192) -> np.ndarray:
    """A black BGR frame with white squares ``(x, y, side)`` in pixels: the tiny model's "faces"."""
    img = np.zeros((h, w, 3), np.uint8)
    for x, y, side in squares:
        img[y : y + side, x : x + side] = 255
    return img


def copy_without_sidecar(xml: Path, dest: Path) -> Path:
    shutil.copy(xml, dest)
    shutil.copy(xml.with_suffix(".bin"), dest.with_suffix(".bin"))
    return dest


def dump_meta(meta: ModelMeta) -> dict[str, object]:
    return json.loads(meta.to_json())
