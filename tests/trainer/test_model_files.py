"""The trainer reads its own output: each file it writes says which network it holds
(trainer/models/files.py), and evaluate / export / info open it without being told."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from edge.errors import ModelError
from tests.trainer.test_engine import make_images
from tests.trainer.test_export import assert_edge_runtimes_match
from trainer.cli import app
from trainer.config import override
from trainer.engine.v1 import DEFAULT_V1_CONFIG, load_v1_config, train_v1
from trainer.models.files import load_model
from trainer.models.v1 import FeatherFaceV1


@pytest.fixture(scope="module")
def plain_v1_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A V1 with ``deformable = false`` trained for two steps by ``train_v1``: its run folder holds
    ``last.pt`` (training checkpoint) and ``model_final.pth`` (model checkpoint)."""
    root = tmp_path_factory.mktemp("v1run")
    label = make_images(root / "data", 4)
    cfg = load_v1_config(DEFAULT_V1_CONFIG, label, root / "out")
    small = {"data.img_dim": 160, "data.batch_size": 2, "data.num_workers": 0, "run.epochs": 1}
    quiet = {"run.device": "cpu", "run.progress": False, "run.amp": False}
    cfg = override(cfg, {"model.deformable": False, "model.backbone_weights": "", **small, **quiet})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = train_v1(cfg)
    finally:
        torch.set_num_threads(threads)
    assert result.state.step == 2
    return root / "out"


def test_checkpoint_and_final_weights_load_as_the_plain_v1_they_hold(plain_v1_run: Path) -> None:
    """Both files the V1 trainer writes rebuild the plain V1 (no --arch), with the trained weights."""
    from_ckpt, arch = load_model(plain_v1_run / "last.pt")
    from_final, arch_final = load_model(plain_v1_run / "model_final.pth")
    assert arch == arch_final == "v1"
    for model in (from_ckpt, from_final):
        assert isinstance(model, FeatherFaceV1) and not model.deformable and not model.training
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        for a, b in zip(from_ckpt(x), from_final(x), strict=True):
            assert torch.equal(a, b)
    # model_final.pth says what it is; a bare state dict (older runs) still loads by its keys.
    final = torch.load(plain_v1_run / "model_final.pth", map_location="cpu", weights_only=True)
    assert final["arch"] == "v1" and final["config"]["deformable"] is False
    assert final["provenance"]["step"] == 2
    torch.save(final["model"], plain_v1_run / "bare.pth")
    bare, arch_bare = load_model(plain_v1_run / "bare.pth")
    assert arch_bare == "v1" and not bare.deformable
    # --arch may repeat what the file says, not contradict it.
    assert load_model(plain_v1_run / "last.pt", "v1")[1] == "v1"
    with pytest.raises(ModelError, match="holds a v1 network, not nano_b"):
        load_model(plain_v1_run / "last.pt", "nano-b")


def test_cli_exports_the_trainers_checkpoint(plain_v1_run: Path, tmp_path: Path) -> None:
    """``export last.pt`` writes verified ONNX / OpenVINO files the edge runs at two sizes like
    PyTorch; ``info`` reads the checkpoint."""
    runner = CliRunner()
    out = tmp_path / "export"
    args = ["export", str(plain_v1_run / "last.pt"), "--format", "onnx,openvino", "--size", "128x96"]
    result = runner.invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "v1.onnx").is_file() and (out / "v1.xml").is_file()
    net, _ = load_model(plain_v1_run / "last.pt")
    files = {"onnx": out / "v1.onnx", "openvino": out / "v1.xml"}
    for w, h in ((128, 96), (201, 153)):
        x = np.random.default_rng(w).normal(0, 50, (1, 3, h, w)).astype(np.float32)
        assert_edge_runtimes_match(net, files, x, 1e-4)

    info = runner.invoke(app, ["info", "--weights", str(plain_v1_run / "last.pt")])
    assert info.exit_code == 0, info.output
    assert "463,662" in info.output  # the plain V1's parameters (docs/models.md)


@pytest.mark.shared
def test_cli_evaluates_the_trainers_own_files(plain_v1_run: Path, tmp_path: Path) -> None:
    from tests.shared_paths import need_shared

    runner = CliRunner()
    wider = need_shared("data/wider-val-dev")
    for name in ("last.pt", "model_final.pth"):
        args = ["evaluate", str(plain_v1_run / name), "--wider-val", str(wider), "--limit", "1"]
        result = runner.invoke(app, [*args, "--scale", "160", "--out", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
        assert " AP " in result.output


def test_a_phase_training_state_points_at_its_student_file(tmp_path: Path) -> None:
    state = {"step": 3, "model": {"student.head.weight": torch.zeros(2, 2), "kd.w_cls": torch.zeros(1)}}
    torch.save(state, tmp_path / "last.pt")
    with pytest.raises(ModelError, match=r"use the student\.pt"):
        load_model(tmp_path / "last.pt")
