"""FeatherFace V1: strict loading of the official weights, reference outputs, plain-conv variant."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edge.anchors import prior_boxes
from edge.errors import ModelError
from tests.shared_paths import need_shared
from trainer.layers.mobilenet import MOBILENET_V1_025_WIDTHS, MobileNetV1, load_imagenet_backbone
from trainer.layers.state import PROFILER_KEYS
from trainer.models import build_model, count_parameters
from trainer.models.v1 import (
    V1_PARAMETERS,
    FeatherFaceV1,
    load_v1_official,
    to_input,
    v1_plain_conv_state,
)

WEIGHTS = "weights/featherface_v1_official.pth"
KEYS = "weights/featherface_v1_official.keys.txt"
REFERENCE = "weights/featherface_v1_reference_outputs.npz"


@pytest.fixture(scope="module")
def official() -> FeatherFaceV1:
    return load_v1_official(need_shared(WEIGHTS))


def test_parameter_count() -> None:
    assert count_parameters(FeatherFaceV1()) == V1_PARAMETERS == 592_371


def test_plain_variant_drops_only_offset_and_modulator_convs() -> None:
    per_dcn = 18 * 64 * 9 + 18 + 9 * 64 * 9 + 9  # offset + modulator convs reading 64 channels
    per_dcn_16 = 18 * 16 * 9 + 18 + 9 * 16 * 9 + 9  # ... reading 16 channels
    assert count_parameters(FeatherFaceV1(deformable=False)) == 592_371 - 3 * (2 * per_dcn + 3 * per_dcn_16)


def test_state_dict_keys_match_the_keys_file() -> None:
    """Every key and shape of the official file (profiler keys aside), without loading it."""
    lines = need_shared(KEYS).read_text().splitlines()
    expected = {}
    for line in lines:
        if line.startswith("#") or not line.strip():
            continue
        key, shape = line.split("\t")
        if key.rsplit(".", 1)[-1] not in PROFILER_KEYS:
            expected[key] = tuple(int(d) for d in shape.strip("()").split(",") if d.strip())
    got = {k: tuple(v.shape) for k, v in FeatherFaceV1().state_dict().items()}
    assert got == expected


@pytest.mark.parametrize("case", [0, 1, 2])
def test_matches_reference_outputs(official: FeatherFaceV1, case: int) -> None:
    ref = np.load(need_shared(REFERENCE))
    image = ref[f"case{case}_input_bgr_uint8"]
    with torch.inference_mode():
        loc, conf, ldm = official(to_input(image))
    h, w = image.shape[:2]
    assert loc.shape == (1, len(prior_boxes(w, h)), 4)
    # Faithful float32 implementations agree to ~1e-5; a misread op moves boxes by whole units.
    np.testing.assert_allclose(loc[0].numpy(), ref[f"case{case}_loc"], atol=5e-5, rtol=0)
    np.testing.assert_allclose(
        conf[0].softmax(-1).numpy(), ref[f"case{case}_conf_softmax"], atol=5e-5, rtol=0
    )
    np.testing.assert_allclose(ldm[0].numpy(), ref[f"case{case}_landmarks"], atol=5e-5, rtol=0)


def test_forward_returns_raw_logits_at_any_size() -> None:
    torch.manual_seed(0)
    model = FeatherFaceV1().eval()
    with torch.inference_mode():
        loc, conf, ldm = model(torch.randn(2, 3, 37, 53) * 50)
    anchors = len(prior_boxes(53, 37))
    assert (loc.shape, conf.shape, ldm.shape) == ((2, anchors, 4), (2, anchors, 2), (2, anchors, 10))
    # Logits, not probabilities: rows do not sum to one.
    assert not torch.allclose(conf.sum(-1), torch.ones(2, anchors))


def test_plain_conv_state_equals_deformable_with_zero_offsets() -> None:
    """Offsets 0 and mask 1 (zeroed offset / modulator convs) make DCN a plain conv."""
    torch.manual_seed(1)
    deformable = FeatherFaceV1().eval()
    for name, param in deformable.named_parameters():
        if ".offset_conv." in name or ".modulator_conv." in name:
            assert not param.any(), f"{name} should start at zero"
        elif "ssh" in name:
            param.data.normal_(0, 0.1)  # not the BN defaults, so the comparison means something
    plain = FeatherFaceV1(deformable=False).eval()
    plain.load_state_dict(v1_plain_conv_state(deformable.state_dict()), strict=True)
    x = torch.randn(1, 3, 64, 80) * 50
    with torch.inference_mode():
        for a, b in zip(deformable(x), plain(x), strict=True):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_official_weights_load_as_plain_variant() -> None:
    plain = load_v1_official(need_shared(WEIGHTS), deformable=False)
    assert not plain.training and not plain.deformable
    ref = np.load(need_shared(REFERENCE))
    with torch.inference_mode():
        loc, _, _ = plain(to_input(ref["case0_input_bgr_uint8"]))
    assert loc.shape == (1, 3160, 4)
    # The learned offsets matter: dropping them changes the boxes.
    assert np.abs(loc[0].numpy() - ref["case0_loc"]).max() > 1e-2


def test_registry_builds_v1_from_weights() -> None:
    model = build_model("v1", weights=str(need_shared(WEIGHTS)))
    assert isinstance(model, FeatherFaceV1) and model.training


def test_missing_file_is_a_model_error(tmp_path) -> None:
    with pytest.raises(ModelError, match="not found"):
        load_v1_official(tmp_path / "nope.pth")


def test_corrupt_file_is_a_one_line_model_error(tmp_path) -> None:
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"this is not a checkpoint\n" * 10)
    with pytest.raises(ModelError, match="cannot read") as err:
        load_v1_official(bad)
    assert "\n" not in str(err.value)


def test_wrong_state_dict_names_the_keys(tmp_path) -> None:
    path = tmp_path / "other.pth"
    state = FeatherFaceV1().state_dict()
    state.pop("ClassHead.0.conv1x1.bias")
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, path)
    with pytest.raises(ModelError, match=r"missing: ClassHead\.0\.conv1x1\.bias; unexpected: extra\.weight"):
        load_v1_official(path)


def test_to_input_rejects_non_bgr() -> None:
    with pytest.raises(ValueError, match="BGR"):
        to_input(np.zeros((4, 4), dtype=np.uint8))
    x = to_input(np.full((2, 3, 3), 104, dtype=np.uint8))
    assert x.shape == (1, 3, 2, 3) and x[0, 0].abs().max() == 0 and x[0, 2].max() == -19


def test_imagenet_backbone_loads_into_the_v1_body() -> None:
    path = need_shared("weights/mobilenetv1_0.25_imagenet.tar")
    body = load_imagenet_backbone(MobileNetV1(), path)
    assert count_parameters(body) == 470_072 - (256 * 1000 + 1000)  # the file's count less the fc
    assert body.state_dict().keys() == FeatherFaceV1().body.state_dict().keys()
    with pytest.raises(ModelError, match="shape mismatch: stage1"):
        load_imagenet_backbone(MobileNetV1(widths=[w * 2 for w in MOBILENET_V1_025_WIDTHS]), path)
