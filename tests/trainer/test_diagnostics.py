"""The recipe diagnostics: anchor coverage of the training crops and held-out AP by test scale."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.shared_paths import need_shared
from tests.tiny_nano_b import CONFIGS


def _one_big_face(tmp_path: Path) -> Path:
    """An 800x600 image whose only face is 500 px: a crop must be the whole short side to hold it."""
    images = tmp_path / "images" / "0--Parade"
    images.mkdir(parents=True)
    image = np.random.default_rng(0).integers(0, 255, (600, 800, 3), dtype=np.uint8)
    cv2.imwrite(str(images / "big.jpg"), image)
    label = tmp_path / "images" / "label.txt"
    label.write_text("# 0--Parade/big.jpg\n150 50 500 500\n")
    return label


def test_anchor_coverage_sees_the_largest_anchors_only_at_a_large_input(tmp_path: Path) -> None:
    from trainer.pipeline.anchor_coverage import FACE_SIZES, coverage
    from trainer.pipeline.recipe import load_recipe
    from trainer.pipeline.run import with_overrides

    recipe = with_overrides(
        load_recipe(CONFIGS / "nano_b_cpu.toml"),
        data={"label_file": str(_one_big_face(tmp_path)), "num_workers": 0},
        split={"val_images": 0, "eval_sets": ()},
    )
    small_faces, small = coverage(recipe, 320, 40, seed=0)
    large_faces, large = coverage(recipe, 640, 40, seed=0)
    # The one face, 500 of 600 px, fills 267 px of a 320-px input and 533 px of a 640-px one.
    big = FACE_SIZES.index(256)
    assert small_faces[big] > 0.9 and large_faces[big] > 0.9
    assert small[512] == 0 and small[256] > 0  # 267 px: IoU with a 512-px anchor <= 0.27
    assert large[512] > 0
    assert small[16] == small[32] == 0  # nothing small in this image
    # Uncropped, padded to 800x800: every sample holds the whole 500-px face at its own scale.
    whole_faces, whole = coverage(recipe, 800, 5, seed=0, whole=True)
    assert whole_faces[big] == 1.0 and whole[512] >= 1.0


def test_anchor_coverage_refuses_an_empty_size_list(capsys: pytest.CaptureFixture[str]) -> None:
    from trainer.pipeline.anchor_coverage import main

    with pytest.raises(SystemExit) as exit_:
        main(["--img-dim"])
    assert exit_.value.code == 2 and "give --img-dim or --whole" in capsys.readouterr().err


@pytest.mark.shared
def test_held_out_prints_ap_and_recall_per_test_scale(capsys: pytest.CaptureFixture[str]) -> None:
    label = need_shared("data/wider-train-pool/label.txt")
    from trainer.pipeline.held_out import main

    model = Path(__file__).parents[2] / "edge" / "models" / "featherface-nano-b.onnx"
    assert main([str(model), "--label-file", str(label), "--val-images", "4", "--scale", "0", "160"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "AP easy / medium / hard" in line]
    assert len(lines) == 2 and "original size" in lines[0] and "longer side 160" in lines[1]
    aps = [[float(v) for v in line.rsplit("hard ", 1)[1].split(" / ")] for line in lines]
    assert all(0.0 <= v <= 100.0 for row in aps for v in row)
    assert aps[0] != aps[1]  # the test scale reached the detector
    assert out.count("held-out images, original size") == 1
