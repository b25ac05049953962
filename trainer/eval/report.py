"""`featherface-train evaluate`: model (or prediction folder) -> WIDER AP, cost, PR plots.

One function, :func:`run_evaluation`, so the CLI command stays a thin wrapper and tests can call it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from edge.errors import DatasetError
from trainer.data.wider import SETTINGS, load_ground_truth, locate_wider_val
from trainer.eval.widerface import WiderResult, evaluate, read_predictions, write_predictions

# Without --scale N (which states its own size) MACs are quoted at this common input size.
DEFAULT_MACS_SIZE = (640, 640)


@dataclass
class EvaluationReport:
    """Everything one evaluation produced; :meth:`lines` is what the CLI prints."""

    model: str
    scale: str
    images: int
    result: WiderResult
    seconds: float
    parameters: int | None = None
    macs: int | None = None
    macs_size: tuple[int, int] | None = None
    predictions_dir: Path | None = None
    plots: list[Path] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"model {self.model}  scale {self.scale}  images {self.images}  ({self.seconds:.1f} s)"]
        for s, res in self.result.settings.items():
            out.append(f"{s:<7} AP {100 * res.ap:6.2f}   ({res.faces} faces)")
        if self.parameters is not None:
            out.append(f"parameters {self.parameters:,}")
        if self.macs is not None and self.macs_size is not None:
            w, h = self.macs_size
            out.append(f"MACs {self.macs / 1e9:.3f} G at {w}x{h}")
        if self.predictions_dir is not None:
            out.append(f"predictions {self.predictions_dir}")
        if self.plots:
            out.append(f"PR curves {self.plots[0].parent}")
        return out


def run_evaluation(
    model: str | Path,
    wider_val: str | Path,
    arch: str | None = None,
    scale: str = "original",
    predictions: str | Path | None = None,
    limit: int | None = None,
    out: str | Path | None = None,
    progress: bool = True,
    events: list[int] | None = None,
) -> EvaluationReport:
    """Evaluate ``model`` (``.pth`` checkpoint, ``.onnx`` file, or a WIDER prediction folder) on the
    val set at ``wider_val`` (``WIDER_val/images`` + ``ground_truth/*.mat``).

    ``limit`` keeps the first K images (and only their faces count); ``events`` keeps those event
    numbers only (a held-out split). Predictions are written to
    ``predictions`` when given; PR-curve PNGs go to ``out``, else beside the predictions (given, or
    the folder evaluated), else to ``runs/evaluate/<model name>``.
    """
    from trainer.eval.plots import plot_pr_curves
    from trainer.eval.predict import load_runner, parse_scale, predict_wider

    start = time.perf_counter()
    model = Path(model)
    images_dir, gt_dir = locate_wider_val(wider_val)
    gt = load_ground_truth(gt_dir).only_events(events).head(limit)
    if len(gt) == 0:
        raise DatasetError(f"{gt_dir}: no images left after --events {events} / --limit {limit}")
    report_kw: dict = {}
    if model.is_dir():  # a folder of <event>/<name>.txt: evaluate it as is
        preds = read_predictions(model)
        scale_text = "as predicted"
    else:
        from trainer.eval.complexity import count_macs, count_parameters

        side = parse_scale(scale)
        runner = load_runner(model, arch)
        preds = predict_wider(runner, gt, images_dir, side, progress=progress)
        scale_text = "original" if side is None else f"longer side {side}"
        size = runner.fixed_size or ((side, side) if side else DEFAULT_MACS_SIZE)
        report_kw = {
            "parameters": count_parameters(runner.model),
            "macs": count_macs(runner.model, *size),
            "macs_size": size,
        }
        if runner.fixed_size:
            scale_text = f"fixed {size[0]}x{size[1]}"
        if predictions is not None:
            write_predictions(predictions, preds)
            report_kw["predictions_dir"] = Path(predictions)
    result = evaluate(preds, gt, settings=SETTINGS)
    # A prediction folder gets its curves beside its own files (never into the working directory).
    beside = predictions or (model if model.is_dir() else None)
    plot_dir = Path(out) if out else Path(beside) if beside else Path("runs/evaluate") / model.stem
    plots = plot_pr_curves(result, plot_dir, label=model.stem)
    return EvaluationReport(
        model=str(model),
        scale=scale_text,
        images=len(gt),
        result=result,
        seconds=time.perf_counter() - start,
        plots=plots,
        **report_kw,
    )
