"""AP and recall by face size on the pipeline's held-out images (:mod:`trainer.eval.by_size`).

    python -m trainer.pipeline.held_out MODEL [MODEL ...] [--scale 0 [640 ...]]
        [--label-file ../shared/data/wider-train-pool/label.txt] [--val-images 96]

runs each model (``.onnx`` or a trainer checkpoint) on the held-out images of the label file (the
``split.val_images`` lowest-hashed, :func:`trainer.pipeline.data.split_by_image`: the images a
pipeline run with that split never trained on) at each test scale (0: original size; N: the longer
side resized to N), and prints the official-protocol AP of the size-based settings with one recall
table per model and scale. Comparing scales tells a network that is weak on every face from one
that is weak only on what full resolution adds.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from trainer.data.labels import read_label_txt
from trainer.eval.by_size import SizeRecall
from trainer.eval.predict import detect, load_runner, read_image, to_wider
from trainer.eval.widerface import evaluate
from trainer.pipeline.data import size_ground_truth, split_by_image


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--scale", type=int, nargs="+", default=[0], help="0: original size; N: longer side N")
    ap.add_argument("--label-file", default="../shared/data/wider-train-pool/label.txt")
    ap.add_argument("--val-images", type=int, default=96)
    args = ap.parse_args(argv)
    _, held = split_by_image(read_label_txt(args.label_file), args.val_images)
    gt, _root = size_ground_truth(held)
    for path in args.models:
        runner = load_runner(path)
        for scale in args.scale:
            counts, preds = SizeRecall(), {}
            for sample in held:
                image = Path(sample.image)
                dets = detect(runner, read_image(image), scale or None, 0.02, 0.4)
                counts.add(sample.boxes, dets)
                preds[(image.parent.name, image.stem)] = to_wider(dets)
            where = "original size" if not scale else f"longer side {scale}"
            ap_ = evaluate(preds, gt).ap
            aps = " / ".join(f"{100 * ap_[k]:.2f}" for k in ("easy", "medium", "hard"))
            print(f"{path}, {where}: AP easy / medium / hard {aps}\n")
            print(counts.markdown(f"{path}: {len(held)} held-out images, {where}") + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
