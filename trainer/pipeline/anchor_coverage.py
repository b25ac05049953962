"""Which anchors a recipe's training crops ever make positive, per anchor size.

    python -m trainer.pipeline.anchor_coverage [--config trainer/configs/nano_b_cpu.toml]
        [--img-dim 320 640] [--whole 1024] [--crops 600] [--seed 0]

draws ``--crops`` training samples through the recipe's own augmentation at each input size, matches
their faces to the priors with the training matcher (:func:`trainer.loss.match.match`), and prints the
faces per crop by size and the positive anchors per crop for each anchor size. An anchor size with no
positives is trained only as background: the network cannot learn to find faces of that size from
this recipe, whatever it was initialised with. ``--whole`` sizes take uncropped images instead (padded
to a square, as an extra input with ``[]`` crop scales draws them).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np
import torch

from edge.anchors import DEFAULT_MIN_SIZES, prior_boxes
from trainer.loss.match import match
from trainer.pipeline.data import build_pipeline_data
from trainer.pipeline.recipe import NanoBRecipe, load_recipe
from trainer.pipeline.run import with_overrides

FACE_SIZES = (16, 64, 128, 256)  # a face's longer side in input pixels, lower bounds of the columns


def coverage(
    recipe: NanoBRecipe, img_dim: int, crops: int, seed: int, whole: bool = False
) -> tuple[np.ndarray, dict[int, float]]:
    """``(faces per crop at or above each of FACE_SIZES, {anchor size: positives per crop})``;
    ``whole``: uncropped images padded to a square instead of the recipe's crops."""
    data_cfg = {"img_dim": img_dim, "extra_inputs": ()} | ({"crop": False} if whole else {})
    data = build_pipeline_data(with_overrides(recipe, data=data_cfg), None)
    priors = torch.from_numpy(prior_boxes(img_dim, img_dim))
    anchor_px = torch.round(priors[:, 2] * img_dim).long()
    sizes = sorted({s for level in DEFAULT_MIN_SIZES for s in level})
    faces, positives = np.zeros(len(FACE_SIZES)), dict.fromkeys(sizes, 0)
    rng = np.random.default_rng(seed)
    for index in rng.integers(len(data.train), size=crops):
        _image, target = data.train[int(index)]
        target = torch.as_tensor(target)
        if len(target) == 0:
            continue
        side = torch.maximum(target[:, 2] - target[:, 0], target[:, 3] - target[:, 1]).numpy() * img_dim
        faces += [(side >= s).sum() for s in FACE_SIZES]
        _loc, conf, _ldm = match(
            target[:, :4],
            target[:, 4:14],
            target[:, -1],
            priors,
            recipe.loss.overlap_threshold,
            recipe.loss.force_min_iou,
        )
        for s in sizes:
            positives[s] += int(((conf != 0) & (anchor_px == s)).sum())
    return faces / crops, {s: n / crops for s, n in positives.items()}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="trainer/configs/nano_b_cpu.toml")
    ap.add_argument("--img-dim", type=int, nargs="*", default=[320, 640])
    ap.add_argument("--whole", type=int, nargs="*", default=[], help="sizes of uncropped, padded images")
    ap.add_argument("--crops", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if not args.img_dim and not args.whole:
        ap.error("nothing to count: give --img-dim or --whole sizes")
    recipe = load_recipe(args.config)
    rows = []
    for dim, whole in [(d, False) for d in args.img_dim] + [(d, True) for d in args.whole]:
        faces, positives = coverage(recipe, dim, args.crops, args.seed, whole)
        rows.append((f"{dim} px" + (" whole" if whole else ""), faces, positives))
    sizes = list(rows[0][2])
    head = [f"faces ≥ {s} px" for s in FACE_SIZES] + [f"positive {s}-px anchors" for s in sizes]
    print(f"{args.config}, {args.crops} training inputs per input size, per input:\n")
    print("| input | " + " | ".join(head) + " |")
    print("|---:|" + "---:|" * len(head))
    for dim, faces, positives in rows:
        cells = [f"{v:.3f}" for v in faces] + [f"{positives[s]:.2f}" for s in sizes]
        print(f"| {dim} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
