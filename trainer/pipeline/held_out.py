"""Recall by face size on the pipeline's held-out images (:mod:`trainer.eval.by_size`).

    python -m trainer.pipeline.held_out MODEL [MODEL ...]
        [--label-file ../shared/data/wider-train-pool/label.txt] [--val-images 96]

runs each model (``.onnx`` or a trainer checkpoint) at original size on the held-out images of the
label file (the ``split.val_images`` lowest-hashed, :func:`trainer.pipeline.data.split_by_image`: the
images a pipeline run with that split never trained on) and prints one table per model.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from trainer.data.labels import read_label_txt
from trainer.eval.by_size import SizeRecall
from trainer.eval.predict import detect, load_runner, read_image
from trainer.pipeline.data import split_by_image


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--label-file", default="../shared/data/wider-train-pool/label.txt")
    ap.add_argument("--val-images", type=int, default=96)
    args = ap.parse_args(argv)
    _, held = split_by_image(read_label_txt(args.label_file), args.val_images)
    for path in args.models:
        runner = load_runner(path)
        counts = SizeRecall()
        for sample in held:
            dets = detect(runner, read_image(Path(sample.image)), None, 0.02, 0.4)
            counts.add(sample.boxes, dets)
        print(counts.markdown(f"{path}: {len(held)} held-out images, original size") + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
