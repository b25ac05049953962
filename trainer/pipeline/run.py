"""``featherface-train nano-b``: the whole Nano-B pipeline, phase after phase, resumable.

    recipe = load_recipe("trainer/configs/nano_b_cpu.toml")
    summary = run_nano_b(recipe, out="runs/nano_b_cpu", resume=True)

Writes under ``out``: ``phase1/``, ``phase2/`` (search study, best rates, spec), ``phase3/``, each with
``metrics.jsonl/.csv``, loss and KD-weight PNGs and ``eval.json``; ``export/nano_b.onnx`` and
``summary.json`` (parameters before / after pruning, held-out AP per phase, files).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from edge.errors import ConfigError
from trainer.engine.checkpoint import seed_everything
from trainer.engine.ddp import DistInfo, barrier, cleanup, init_distributed, pick_device
from trainer.pipeline.calibrate import real_samples
from trainer.pipeline.data import build_pipeline_data
from trainer.pipeline.phases import (
    export_student,
    phase1_distill,
    phase2_prune,
    phase3_finetune,
    start_student,
)
from trainer.pipeline.recipe import NanoBRecipe
from trainer.pipeline.train import PhaseContext

log = logging.getLogger(__name__)


def load_teacher(recipe: NanoBRecipe, device: torch.device) -> torch.nn.Module | None:
    """The V1 teacher in eval mode, or None (task loss only) when ``teacher.weights`` is empty."""
    if not recipe.teacher.weights:
        log.warning("no teacher weights configured: training without distillation")
        return None
    from trainer.models.v1 import load_v1_official

    teacher = load_v1_official(recipe.teacher.weights, deformable=recipe.teacher.deformable).to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def make_context(
    recipe: NanoBRecipe, out: str | Path | None = None, resume: bool = False, info: DistInfo | None = None
) -> PhaseContext:
    """Threads, seed, teacher and data for a run rooted at ``out`` (default ``run.out_dir``), on
    ``info``'s device and rank (default: one process on ``run.device``)."""
    run = recipe.run
    out_dir = Path(out) if out is not None else Path(run.out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not resume:
        raise ConfigError(
            f"output folder {out_dir} is not empty: pass --resume to continue it, or another --out"
        )
    if info is None:
        info = DistInfo(device=pick_device(run.device))
    barrier(info)  # every rank has checked the folder before rank 0 writes into it
    if run.threads:
        torch.set_num_threads(run.threads)
    seed_everything(run.seed)
    teacher = load_teacher(recipe, info.device)
    data = build_pipeline_data(recipe, teacher)
    if recipe.calibrate.images and not real_samples(data.train):
        # Said now, not after phase 3 has trained: calibration needs images to show the teacher.
        raise ConfigError("calibrate.images needs image files among the training data (it has none)")
    if info.is_main:
        record_config(out_dir, recipe)
    return PhaseContext(recipe, out_dir, teacher, data, resume, info)


def _differences(old: Any, new: Any, key: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            d
            for k in sorted(old.keys() | new.keys())
            for d in _differences(old.get(k), new.get(k), f"{key}.{k}".lstrip("."))
        ]
    return [] if old == new else [f"{key} {json.dumps(old)} -> {json.dumps(new)}"]


def record_config(out_dir: Path, recipe: NanoBRecipe) -> list[str]:
    """Write the run's settings to ``out_dir/config.json``; returns what differs from the file there.

    A resumed run may change settings on purpose (another phase-3 cycle, more training inputs), but
    then its batches and schedules follow the new ones: say which, and keep the settings it ran with
    until now as ``config.previous.json``.
    """
    from trainer.config import to_dict

    out_dir.mkdir(parents=True, exist_ok=True)
    path, new = out_dir / "config.json", to_dict(recipe)
    changed: list[str] = []
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            old = None
        changed = _differences(old, new) if old is not None else ["config.json unreadable"]
        if changed:
            path.replace(out_dir / "config.previous.json")
            log.warning(
                "resuming with other settings than the run had (kept in config.previous.json): %s",
                "; ".join(changed),
            )
    path.write_text(json.dumps(new, indent=1) + "\n")
    return changed


PHASES = ("phase1", "phase2", "phase3")


def run_nano_b(
    recipe: NanoBRecipe,
    out: str | Path | None = None,
    resume: bool = False,
    until: str = "phase3",
    info: DistInfo | None = None,
) -> dict[str, Any]:
    """Phase 1 -> phase 2 -> phase 3 -> export; returns (and writes, on rank 0) the summary.

    ``until`` stops after an earlier phase (e.g. ``"phase1"`` for a distillation ablation); the run
    can later go on with ``resume=True``. Export only follows a complete run. Launched by torchrun,
    every rank trains and rank 0 alone searches, evaluates and writes (``info`` is the caller's
    process group; by default one is joined from torchrun's environment and left at the end).
    """
    if until not in PHASES:
        raise ConfigError(f"until must be one of {', '.join(PHASES)}, got {until!r}")
    owned = info is None
    if info is None:
        info = init_distributed(recipe.run.device)
    try:
        return _run_phases(make_context(recipe, out, resume, info), until)
    finally:
        if owned:
            cleanup(info)


def _run_phases(ctx: PhaseContext, until: str) -> dict[str, Any]:
    start = time.perf_counter()
    recipe = ctx.recipe
    log.info("data: %s", ctx.data.describe())
    last = PHASES.index(until)
    if recipe.run.start_from:  # a trained student stands in for phases 1 and 2
        p1 = None
        p2 = start_student(ctx) if last >= 1 else None
    else:
        p1 = phase1_distill(ctx)
        p2 = phase2_prune(ctx, p1) if last >= 1 else None
    p3 = phase3_finetune(ctx, p2) if p2 is not None and last >= 2 else None
    export = p3 is not None and recipe.run.export and ctx.info.is_main
    onnx_path = export_student(ctx, p3) if export else None
    summary: dict[str, Any] = {
        "data": ctx.data.describe(),
        "val_events": list(recipe.split.val_events),
        "val_scale": recipe.split.val_scale,
        "files": {
            "phase1": str(p1) if p1 else None,
            "phase2": str(p2) if p2 else None,
            "phase3": str(p3) if p3 else None,
            "onnx": str(onnx_path) if onnx_path else None,
        },
        "seconds": round(time.perf_counter() - start, 1),
    }
    for name in ("start", *PHASES):
        path = ctx.out / name / "eval.json"
        if path.is_file():
            summary[name] = json.loads(path.read_text())
    if ctx.info.is_main:
        (ctx.out / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    barrier(ctx.info)
    return summary


def with_overrides(recipe: NanoBRecipe, **tables: dict[str, Any]) -> NanoBRecipe:
    """``recipe`` with some fields of some tables replaced (tests and smoke runs)."""
    return dataclasses.replace(
        recipe, **{k: dataclasses.replace(getattr(recipe, k), **v) for k, v in tables.items()}
    )
