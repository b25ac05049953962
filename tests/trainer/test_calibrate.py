"""Teacher-calibrated face-logit offsets per pyramid level (trainer.pipeline.calibrate)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from edge.anchors import level_counts
from edge.errors import ConfigError
from trainer.data.labels import FaceSample
from trainer.models.nano_b import NanoB, NanoBConfig
from trainer.pipeline.calibrate import fit_offset, level_offsets, pick_images, shift_face_logits


def test_fit_offset_recovers_a_known_shift() -> None:
    z = torch.randn(5000) * 3
    assert fit_offset(z, torch.sigmoid(z - 1.3)) == pytest.approx(-1.3, abs=1e-6)
    assert fit_offset(z, torch.sigmoid(z)) == pytest.approx(0.0, abs=1e-6)


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for w, h in ((96, 64), (130, 90))]


def test_level_offsets_find_each_levels_shift_and_folding_them_matches_the_teacher() -> None:
    """A 'teacher' that is the student with each level's face logit moved by its own constant: the
    fitted offsets are those constants, and folding them into the student's class heads gives the
    teacher's face probabilities on every anchor, while boxes and landmarks stay as they were."""
    torch.manual_seed(0)
    student = NanoB(NanoBConfig()).eval()
    with torch.no_grad():  # spread the face logits, so every level has anchors on both sides of 0.5
        for head in student.ClassHead:
            head.conv1x1.weight.mul_(20.0)
            head.conv1x1.bias.zero_()
    teacher = copy.deepcopy(student)
    shift = [0.7, -1.5, 2.25]
    shift_face_logits(teacher.ClassHead, shift)
    got = level_offsets(student, teacher, _images())
    assert got == pytest.approx(shift, abs=1e-5)

    x = torch.randn(1, 3, 90, 130)
    with torch.no_grad():
        before = student(x)
        shift_face_logits(student.ClassHead, got)
        after, want = student(x), teacher(x)
    torch.testing.assert_close(after[1].softmax(-1), want[1].softmax(-1), atol=1e-5, rtol=0)
    assert torch.equal(after[0], before[0]) and torch.equal(after[2], before[2])
    assert torch.equal(after[1][..., 0], before[1][..., 0])  # the background logit is untouched
    # Each level moved by its own offset, anchor for anchor (prior order: level by level).
    moved = (after[1][0, :, 1] - before[1][0, :, 1]).split(level_counts(130, 90))
    for level, b in zip(moved, got, strict=True):
        torch.testing.assert_close(level, torch.full_like(level, b), atol=1e-5, rtol=0)


def test_level_offsets_at_a_test_scale_and_bad_inputs() -> None:
    torch.manual_seed(1)
    student = NanoB(NanoBConfig()).eval()
    teacher = copy.deepcopy(student)
    shift_face_logits(teacher.ClassHead, [0.0, 0.0, -2.0])
    assert level_offsets(student, teacher, _images(), scale=64) == pytest.approx([0, 0, -2.0], abs=1e-5)
    with pytest.raises(ValueError, match="at least one image"):
        level_offsets(student, teacher, [])
    with pytest.raises(ValueError, match="2 offsets for 3 class heads"):
        shift_face_logits(student.ClassHead, [0.0, 1.0])


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
