"""An exported Nano-B rebuilt for training (trainer.export.from_onnx): the file's widths and function."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from edge.contract import METADATA_KEY
from edge.errors import ModelError
from trainer.export import export_model
from trainer.export.exporter import InferenceHead
from trainer.export.from_onnx import restandardise, student_from_onnx
from trainer.models.files import load_student, save_student
from trainer.models.nano_b import NanoB, NanoBConfig
from trainer.prune.surgery import analyse, remove_channels

RATES = {"backbone_early": 0.2, "backbone_late": 0.4, "cbam": 0.3, "bifpn": 0.5, "ssh": 0.35, "heads": 0.1}


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory):
    """A pruned Nano-B with trained-looking tensors (every BN, bias and fusion weight off its default),
    exported as the pipeline exports, then rebuilt from the file alone."""
    torch.manual_seed(0)
    net = NanoB().eval()
    x = torch.zeros(1, 3, 64, 64)
    remove_channels(net, analyse(net, x, net.prune_groups(), multiple=8).select(net, RATES), x)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
            elif isinstance(m, nn.Conv2d) and m.bias is not None:
                m.bias.uniform_(-0.2, 0.2)
        for name, p in net.named_parameters():
            if name.rsplit(".", 1)[-1] in ("p4_w1", "p3_w1", "p4_w2", "p5_w2"):
                p.uniform_(0.2, 2.0)
    path = export_model(net, tmp_path_factory.mktemp("import"), "nano_b", width=128, height=96).files["onnx"]
    return net, path, student_from_onnx(path)


def _outputs(net: nn.Module, x: torch.Tensor) -> list[np.ndarray]:
    with torch.no_grad():
        return [t.numpy() for t in InferenceHead(net).eval()(x)]


def _assert_same(a: list[np.ndarray], b: list[np.ndarray], tol: float = 1e-4) -> None:
    for u, v in zip(a, b, strict=True):
        np.testing.assert_allclose(u, v, atol=tol * max(1.0, float(np.abs(u).max())), rtol=0)


def test_import_gives_back_the_pruned_widths_and_the_function(imported) -> None:
    net, path, result = imported
    ours = result.model.state_dict()
    for key, value in net.state_dict().items():
        if key.endswith(".weight"):
            assert ours[key].shape == value.shape, key
    assert sum(p.numel() for p in result.model.parameters()) == sum(p.numel() for p in net.parameters())
    assert result.spec == {
        k.removesuffix(".weight"): list(v.shape) for k, v in ours.items() if k.endswith(".weight")
    }
    # Inputs of other sizes than the export's, and than each other: the same function, not one point.
    for h, w in ((96, 128), (250, 330)):
        x = torch.from_numpy(np.random.default_rng(h).uniform(-120, 130, (1, 3, h, w)).astype(np.float32))
        _assert_same(_outputs(net, x), _outputs(result.model, x))
    # The file records the architecture, so it alone is enough.
    meta = json.loads({p.key: p.value for p in onnx.load(path).metadata_props}[METADATA_KEY])
    assert NanoBConfig.from_options(meta["provenance"]["model"]) == net.cfg


def test_restandardised_bns_keep_the_function_and_train_from_it(imported) -> None:
    """Folded BNs come back as identities; given statistics, eval mode is unchanged and a training-mode
    pass over the same images gives (nearly) the same outputs, which an identity BN does not."""
    _, _, result = imported
    blob = torch.from_numpy(np.random.default_rng(5).uniform(-120, 130, (2, 3, 96, 128)).astype(np.float32))
    model = copy.deepcopy(result.model)
    before = _outputs(model, blob)
    folded = {
        name
        for name, m in result.model.named_modules()
        if isinstance(m, nn.BatchNorm2d) and torch.all(m.running_var == 1.0 - m.eps)
    }
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(folded) == len(bns) - 1  # every BN but the one the export kept as a node (ASSN's output)
    assert restandardise(model, [blob]) == len(folded)
    _assert_same(before, _outputs(model, blob))

    def train_mode(m: nn.Module) -> list[np.ndarray]:
        """Folded BNs on batch statistics; the kept one keeps its trained statistics, as in eval."""
        m = copy.deepcopy(m).eval()
        for name, bn in m.named_modules():
            if name in folded:
                bn.train()
        with torch.no_grad():
            return [t.numpy() for t in InferenceHead(m)(blob)]

    # BN normalises with the batch's own statistics here: the ones restandardise measured.
    _assert_same(before, train_mode(model))
    identity = train_mode(result.model)
    assert max(float(np.abs(a - b).max()) for a, b in zip(before, identity, strict=True)) > 0.1


def test_an_imported_student_saves_and_reloads(imported, tmp_path: Path) -> None:
    _, _, result = imported
    save_student(tmp_path / "student.pt", result.model, result.spec)
    again, spec = load_student(tmp_path / "student.pt")
    assert spec == result.spec
    x = torch.randn(1, 3, 64, 96) * 50
    _assert_same(_outputs(result.model, x), _outputs(again, x))


def _edit_metadata(src: Path, dst: Path, edit) -> Path:
    model = onnx.load(src)
    for p in model.metadata_props:
        if p.key == METADATA_KEY:
            doc = json.loads(p.value)
            edit(doc)
            p.value = json.dumps(doc)
    onnx.save(model, dst)
    return dst


def test_bad_files_are_refused_in_one_line(imported, tmp_path: Path) -> None:
    _, path, _ = imported
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(Path(path).read_bytes()[:5000])
    with pytest.raises(ModelError) as info:
        student_from_onnx(broken)
    assert "broken.onnx" in str(info.value) and "\n" not in str(info.value)

    other = _edit_metadata(path, tmp_path / "v1.onnx", lambda d: d.update(name="v1"))
    with pytest.raises(ModelError, match="holds a 'v1' network"):
        student_from_onnx(other)

    # A file whose provenance does not name its design, read as another design: named, not guessed.
    bare = _edit_metadata(path, tmp_path / "bare.onnx", lambda d: d["provenance"].pop("model"))
    with pytest.raises(ModelError, match="not exported from this Nano-B design") as info:
        student_from_onnx(bare, NanoBConfig(bifpn_cells=2))
    assert "\n" not in str(info.value)
