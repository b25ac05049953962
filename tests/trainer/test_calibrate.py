"""Teacher-calibrated face scores per pyramid level: a scale and an offset of the face log-odds
(trainer.pipeline.calibrate)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from edge.anchors import level_counts
from edge.errors import ConfigError
from tests.shared_paths import need_shared
from tests.tiny_nano_b import tiny_recipe
from trainer.data.labels import FaceSample
from trainer.models.nano_b import NanoB, NanoBConfig
from trainer.pipeline.calibrate import calibrate_face_logits, fit_level, level_calibration, pick_images


def test_fit_level_recovers_a_known_scale_and_offset() -> None:
    torch.manual_seed(0)
    z = torch.randn(5000) * 3
    assert fit_level(z, torch.sigmoid(0.6 * z - 1.3)) == pytest.approx((0.6, -1.3), abs=1e-6)
    assert fit_level(z, torch.sigmoid(z)) == pytest.approx((1.0, 0.0), abs=1e-6)
    # A trained detector's background anchors sit tens of units below zero: a full Newton step from
    # (1, 0) saturates every sigmoid there, so the fit must search along the step.
    for mean, spread, a, b in ((-12, 8, 0.5, -3.0), (-30, 20, 0.634, -1.6)):
        z = torch.randn(100_000) * spread + mean
        assert fit_level(z, torch.sigmoid(a * z + b)) == pytest.approx((a, b), abs=1e-5)


def test_fit_level_refuses_what_it_cannot_fit(caplog: pytest.LogCaptureFixture) -> None:
    """No face at all in the target, a target that ranks the other way or that has nothing to do with
    the student's scores, or a scale beyond reason: the level is left as it is."""
    torch.manual_seed(0)
    z = torch.randn(5000) * 3
    assert fit_level(z, torch.zeros(5000)) == (1.0, 0.0)
    assert fit_level(z, torch.sigmoid(-z)) == (1.0, 0.0)
    # A level whose scores say nothing of the teacher's would be flattened to one score (a near 0).
    unrelated = torch.sigmoid(torch.randn(5000) * 3)
    assert fit_level(z, unrelated) == (1.0, 0.0)
    assert fit_level(z, torch.sigmoid(6.0 * z)) == (1.0, 0.0)
    assert caplog.text.count("level calibration") == 4


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for w, h in ((96, 64), (130, 90))]


def _spread_student(seed: int) -> NanoB:
    """An untrained Nano-B whose face logits spread over both sides of 0.5 on every level."""
    torch.manual_seed(seed)
    student = NanoB(NanoBConfig()).eval()
    with torch.no_grad():
        for head in student.ClassHead:
            head.conv1x1.weight.mul_(20.0)
            head.conv1x1.bias.zero_()
    return student


def test_level_calibration_finds_each_levels_map_and_folding_it_matches_the_teacher() -> None:
    """A 'teacher' that is the student with each level's face log-odds mapped by its own (a, b): the
    fit finds those maps, and folding them into the student's class heads gives the teacher's face
    probabilities on every anchor, while boxes, landmarks and background logits stay as they were."""
    student = _spread_student(0)
    teacher = copy.deepcopy(student)
    want = [(1.0, 0.7), (0.5, -1.5), (1.8, 2.25)]
    calibrate_face_logits(teacher.ClassHead, want)
    got = level_calibration(student, teacher, _images())
    for g, w in zip(got, want, strict=True):
        assert g == pytest.approx(w, abs=1e-4)

    x = torch.randn(1, 3, 90, 130)
    with torch.no_grad():
        before = student(x)
        calibrate_face_logits(student.ClassHead, got)
        after, target = student(x), teacher(x)
    torch.testing.assert_close(after[1].softmax(-1), target[1].softmax(-1), atol=1e-4, rtol=0)
    assert torch.equal(after[0], before[0]) and torch.equal(after[2], before[2])
    assert torch.equal(after[1][..., 0], before[1][..., 0])  # the background logit is untouched
    # Each level's face log-odds moved by its own map, anchor for anchor (prior order: level by level).
    z0 = (before[1][0, :, 1] - before[1][0, :, 0]).split(level_counts(130, 90))
    z1 = (after[1][0, :, 1] - after[1][0, :, 0]).split(level_counts(130, 90))
    for old, new, (a, b) in zip(z0, z1, got, strict=True):
        torch.testing.assert_close(new, a * old + b, atol=1e-3, rtol=1e-5)


def test_level_calibration_at_a_test_scale_and_bad_inputs() -> None:
    student = _spread_student(1)
    teacher = copy.deepcopy(student)
    calibrate_face_logits(teacher.ClassHead, [(1.0, 0.0), (1.0, 0.0), (0.5, -2.0)])
    got = level_calibration(student, teacher, _images(), scale=64)
    assert got[0] == pytest.approx((1.0, 0.0), abs=1e-4) and got[2] == pytest.approx((0.5, -2.0), abs=1e-4)
    with pytest.raises(ValueError, match="at least one image"):
        level_calibration(student, teacher, [])
    with pytest.raises(ValueError, match="2 calibrations for 3 class heads"):
        calibrate_face_logits(student.ClassHead, [(1.0, 0.0), (1.0, 1.0)])


def test_pick_images_does_not_depend_on_file_order() -> None:
    samples = [FaceSample(Path(f"e/{i}.jpg"), np.zeros((0, 4)), np.zeros((0, 10))) for i in range(20)]
    first = pick_images(samples, 5)
    assert len(first) == 5
    assert [s.image for s in pick_images(samples[::-1], 5)] == [s.image for s in first]


def test_calibration_without_a_teacher_is_refused() -> None:
    """A config asking for calibration with no teacher fails when read, not after phase 3."""
    from trainer.config import from_dict
    from trainer.pipeline.recipe import NanoBRecipe

    with pytest.raises(ConfigError, match=r"calibrate\.images needs a teacher"):
        from_dict(NanoBRecipe, {"teacher": {"weights": ""}, "calibrate": {"images": 4}})
    assert from_dict(NanoBRecipe, {"teacher": {"weights": ""}}).calibrate.images == 0


@pytest.mark.shared
def test_calibration_with_no_image_files_to_show_is_refused_before_training(tmp_path: Path) -> None:
    """Training data of synthetic scenes only has nothing to show the teacher: the run stops when its
    data is built, not after phase 3."""
    need_shared("weights/featherface_v1_official.pth")
    need_shared("data/face-crops-5pt")
    from trainer.pipeline.run import make_context, with_overrides

    recipe = with_overrides(
        tiny_recipe(tmp_path / "run"),
        data={"label_file": "", "synthetic_scenes": 4},
        split={"val_images": 0},
    )
    with pytest.raises(ConfigError, match=r"calibrate\.images needs image files"):
        make_context(recipe, tmp_path / "run")
    assert not (tmp_path / "run" / "phase1").exists()
