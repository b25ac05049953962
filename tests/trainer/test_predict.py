"""Running models on images (PyTorch and ONNX Runtime), model cost, and the WIDER acceptance runs."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edge.anchors import prior_boxes
from edge.contract import METADATA_KEY, InputSpec, ModelMeta
from edge.errors import ConfigError, ModelError
from tests.shared_paths import need_shared
from trainer.data.wider import load_ground_truth, locate_wider_val
from trainer.eval.complexity import count_macs, count_parameters
from trainer.eval.predict import (
    detect,
    load_runner,
    load_torch_model,
    onnx_runner,
    parse_scale,
    predict_wider,
    to_wider,
    torch_runner,
)
from trainer.eval.widerface import evaluate

KS = (4, 2, 10)  # loc, conf, landmarks values per anchor


class TinyDetector(nn.Module):
    """A real (random-weight) RetinaFace-shaped network: strides 8/16/32, 2 anchors per location."""

    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng():  # the same weights every time, without touching the global seed
            torch.manual_seed(0)
            self.body = nn.ModuleList([nn.Conv2d(3 if i == 0 else 4, 4, 3, 2, 1) for i in range(5)])
            self.heads = nn.ModuleList([nn.Conv2d(4, 2 * k, 1) for k in KS])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feats = []
        for i, conv in enumerate(self.body):
            x = torch.relu(conv(x / 64 if i == 0 else x))
            if i >= 2:
                feats.append(x)
        return tuple(
            torch.cat([h(f).permute(0, 2, 3, 1).reshape(1, -1, k) for f in feats], 1)
            for h, k in zip(self.heads, KS, strict=True)
        )


class FirstPrior(nn.Module):
    """Fires on the first prior only (stride 8, size 16, centre (4, 4) input pixels) with zero
    regression, so the expected detection is known exactly at any input size."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h, w = x.shape[2:]
        a = len(prior_boxes(int(w), int(h)))
        conf = torch.zeros(1, a, 2)
        conf[0, :, 0] = 10.0
        conf[0, 0] = torch.tensor([0.0, 10.0])
        return torch.zeros(1, a, 4), conf, torch.zeros(1, a, 10)


def export_onnx(model: nn.Module, path: Path, meta: ModelMeta | None) -> Path:
    import warnings

    import onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(1, 3, 64, 96),),
            str(path),
            input_names=["input"],
            output_names=["loc", "conf", "landmarks"],
            dynamic_axes={"input": {2: "h", 3: "w"}},
            dynamo=False,
        )
    if meta is not None:
        proto = onnx.load(str(path))
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, meta.to_json()
        onnx.save(proto, str(path))
    return path


def test_parse_scale() -> None:
    assert parse_scale("original") is None and parse_scale(None) is None
    assert parse_scale("640") == 640
    for bad in ("0", "-3", "big"):
        with pytest.raises(ConfigError, match="--scale"):
            parse_scale(bad)


@pytest.mark.parametrize(("scale", "factor"), [(None, 1.0), (320, 2.0)])
def test_detections_are_in_original_image_pixels(scale: int | None, factor: float) -> None:
    image = np.zeros((480, 640, 3), dtype=np.uint8)
    found = detect(torch_runner(FirstPrior()), image, scale=scale)
    assert found.shape == (1, 15)
    # the prior box (-4, -4, 12, 12) in input pixels, scaled back to the 640 x 480 original
    np.testing.assert_allclose(found[0, :4], np.array([-4, -4, 12, 12]) * factor, atol=1e-4)
    np.testing.assert_allclose(found[0, 5:], 4 * factor, atol=1e-4)  # landmarks at the prior centre
    assert found[0, 4] == pytest.approx(1 / (1 + np.exp(-10)), rel=1e-6)
    np.testing.assert_allclose(
        to_wider(found)[0], [-4 * factor, -4 * factor, 16 * factor, 16 * factor, found[0, 4]]
    )


def test_onnx_matches_torch_with_and_without_metadata(tmp_path: Path) -> None:
    model = TinyDetector().eval()
    image = np.random.default_rng(1).integers(0, 255, (150, 200, 3), dtype=np.uint8)
    expected = detect(torch_runner(model), image, conf_threshold=0.3)
    assert len(expected) > 3  # NMS left several detections to compare
    meta = ModelMeta(
        name="tiny", version="0", input=InputSpec(width=96, height=64, dynamic=True), conf_softmax=False
    )
    with_meta = onnx_runner(export_onnx(model, tmp_path / "meta.onnx", meta))
    bare = load_runner(
        export_onnx(model, tmp_path / "bare.onnx", None)
    )  # roles found by shape, logits by sum
    assert with_meta.name == "tiny" and bare.name == "bare"
    for runner in (with_meta, bare):
        got = detect(runner, image, conf_threshold=0.3)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3)


def test_fixed_size_onnx_model_stretches_the_image(tmp_path: Path) -> None:
    meta = ModelMeta(name="fixed", version="0", input=InputSpec(width=96, height=64), conf_softmax=False)
    runner = onnx_runner(export_onnx(TinyDetector().eval(), tmp_path / "fixed.onnx", meta))
    assert runner.fixed_size == (96, 64)
    image = np.zeros((128, 192, 3), dtype=np.uint8)
    found = detect(runner, image, scale=999, conf_threshold=0.0)  # the fixed size wins over --scale
    assert len(found) and found[:, [0, 2]].max() > 96  # boxes mapped back to the 192-wide original


def test_count_macs_torch_and_onnx_agree(tmp_path: Path) -> None:
    import onnx

    model = TinyDetector().eval()
    # 96 x 64 input: body convs at 48x32, 24x16, 12x8, 6x4, 3x2; heads on the last three maps
    body = 4 * 27 * 48 * 32 + sum(4 * 36 * w * h for w, h in ((24, 16), (12, 8), (6, 4), (3, 2)))
    heads = sum(2 * k * 4 * w * h for k in KS for w, h in ((12, 8), (6, 4), (3, 2)))
    assert count_macs(model, 96, 64) == body + heads
    proto = onnx.load(str(export_onnx(model, tmp_path / "t.onnx", None)))
    assert count_macs(proto, 96, 64) == body + heads
    assert count_parameters(proto) == count_parameters(model) == sum(p.numel() for p in model.parameters())


def test_checkpoints_name_their_network(tmp_path: Path) -> None:
    from trainer.models import build_model

    model = build_model("v1", deformable=False)
    ckpt = tmp_path / "ckpt.pth"
    torch.save({"arch": "v1", "config": {"deformable": False}, "model": model.state_dict()}, ckpt)
    loaded, arch = load_torch_model(ckpt)
    assert arch == "v1" and not loaded.training
    first = next(iter(model.state_dict()))
    assert torch.equal(loaded.state_dict()[first], model.state_dict()[first])
    bare = tmp_path / "bare.pth"
    torch.save(model.state_dict(), bare)
    # A bare V1 state dict is known by its keys, plain (no offset convs) included, with or without --arch.
    for arch_given in (None, "v1"):
        loaded, arch = load_torch_model(bare, arch_given)
        assert arch == "v1" and not loaded.deformable
    nano = tmp_path / "nano.pth"
    torch.save(build_model("nano_b").state_dict(), nano)
    with pytest.raises(ModelError, match="--arch"):
        load_torch_model(nano)  # its options and widths are not in its keys
    with pytest.raises(ModelError, match="does not fit"):
        load_torch_model(nano, "v1")
    with pytest.raises(ConfigError, match="unknown model"):
        load_torch_model(bare, "v9")
    with pytest.raises(ModelError, match="not found"):
        load_runner(tmp_path / "absent.pth", "v1")


# ----------------------------------------------------------------------------- acceptance on wider-val-dev


def _wider_dev() -> tuple[Path, object]:
    root = need_shared("data/wider-val-dev")
    images, gt_dir = locate_wider_val(root)
    return images, load_ground_truth(gt_dir)


@pytest.mark.shared
def test_official_v1_reproduces_reference_ap_on_wider_val_dev() -> None:
    """Reference: official V1, original size, dump 0.02, NMS 0.4 (+1 px): 85.81 / 83.06 / 69.10."""
    weights = need_shared("weights/featherface_v1_official.pth")
    images, gt = _wider_dev()
    start = time.perf_counter()
    runner = load_runner(weights, arch="v1")
    ap = evaluate(predict_wider(runner, gt, images, scale=None, progress=False), gt).ap
    seconds = time.perf_counter() - start
    got = [100 * ap[s] for s in ("easy", "medium", "hard")]
    assert got == pytest.approx([85.81, 83.06, 69.10], abs=0.5), f"{got} in {seconds:.0f} s"
    assert count_parameters(runner.model) == 592_371


@pytest.mark.shared
@pytest.mark.slow
def test_retinaface_peer_reproduces_reference_ap_on_wider_val_dev() -> None:
    """Reference: RetinaFace-mnet0.25 ONNX (softmax inside), original size, NMS 0.4: 84.63 / 81.57 / 65.57."""
    model = need_shared("weights/peers/retinaface_mbnet0.25.onnx")
    images, gt = _wider_dev()
    ap = evaluate(predict_wider(load_runner(model), gt, images, scale=None, progress=False), gt).ap
    got = [100 * ap[s] for s in ("easy", "medium", "hard")]
    assert got == pytest.approx([84.63, 81.57, 65.57], abs=0.5)


@pytest.mark.shared
def test_cli_evaluates_onnx_peer_on_a_few_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from trainer.cli import app

    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # nothing may land in the working directory (the checkout)

    model = need_shared("weights/peers/retinaface_mbnet0.25.onnx")
    root = need_shared("data/wider-val-dev")
    pred = tmp_path / "pred"
    args = ["evaluate", str(model), "--wider-val", str(root), "--limit", "3", "--scale", "320"]
    result = CliRunner().invoke(app, [*args, "--predictions", str(pred)])
    assert result.exit_code == 0, result.output
    assert "parameters 423,264" in result.output and "MACs 0.245 G at 320x320" in result.output
    assert "img/s" not in result.output and "\r" not in result.output  # no progress bar off a terminal
    assert len(list(pred.glob("*/*.txt"))) == 3 and (pred / "pr_hard.png").is_file()
    again = CliRunner().invoke(app, ["evaluate", str(pred), "--wider-val", str(root), "--limit", "3"])
    assert again.exit_code == 0, again.output
    assert not (tmp_path / "cwd" / "runs").exists()  # curves went beside the predictions
    ap_lines = [ln for ln in result.output.splitlines() if " AP " in ln]
    assert ap_lines and ap_lines == [ln for ln in again.output.splitlines() if " AP " in ln]
