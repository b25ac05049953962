"""The three Nano-B phases (DESIGN §3), each a function that reads top to bottom and resumes.

    phase1_distill   teacher-initialised Nano-B, (1 - alpha) * MultiBox + alpha * KD
    phase2_prune     Bayesian search of the six group rates -> soft FPGM pruning on a polynomial
                     schedule with those rates -> physical channel removal (+ the width spec)
    phase3_finetune  the pruned network at a reduced learning rate, KD still on, then ONNX export

Each phase writes ``<out>/phaseN/student.pt`` (weights + architecture + pruning spec) when it is done
and is skipped when that file exists; a killed phase resumes from ``<out>/phaseN/last.pt``. Under
torchrun every rank trains (the same network on its own shard); rank 0 alone runs the pruning search,
the held-out evaluation and every write, and the others wait for it at a barrier.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from trainer.data.dataset import endless_batches
from trainer.engine.ddp import barrier
from trainer.export.from_onnx import restandardise, student_from_onnx
from trainer.loss.distill import KD_TERMS
from trainer.models.files import load_kd_state, load_student, save_student
from trainer.models.init_from_teacher import init_backbone_imagenet, init_from_teacher
from trainer.models.nano_b import NanoB
from trainer.pipeline.calibrate import calibrate_face_logits, level_calibration, pick_images, real_samples
from trainer.pipeline.loop import make_losses, recalibrate_bn, validation_ap, validation_loss
from trainer.pipeline.train import PhaseContext, train_steps
from trainer.prune.groups import model_groups
from trainer.prune.latency import onnx_latency_ms
from trainer.prune.search import MIN_TRIALS, SearchConfig, load_best_rates, run_search
from trainer.prune.soft import SoftPruner
from trainer.prune.surgery import ParamCounter, analyse, count_params, prune_spec, remove_channels

log = logging.getLogger(__name__)


def evaluate_student(ctx: PhaseContext, model: torch.nn.Module) -> dict[str, float]:
    """Held-out AP (easy / medium / hard at ``split.val_scale``), validation loss and parameters."""
    losses = make_losses(ctx.recipe, ctx.recipe.data.img_dim, ctx.device)
    row: dict[str, float] = {"params": float(count_params(model))}
    row["val_loss"] = validation_loss(model, ctx.data, losses, ctx.device, ctx.recipe.data.batch_size)
    row.update(validation_ap(model, ctx.data, ctx.recipe.split.val_scale))
    return row


@contextmanager
def _training_batches(ctx: PhaseContext, steps: int) -> Iterator[Iterator[Any]]:
    """Training batches on a separate seed stream, for statistics rather than steps."""
    data = ctx.recipe.data
    # Loader workers build the batches (the GPU recipe has 14): the main process alone took 8 s for 8
    # batches of 32 at 640 px on the 2-core development machine, while a whole H100 search trial took
    # 22-27 s. No more workers than batches (each prefetches two). Same batches either way.
    workers = min(data.num_workers, steps)
    batches = endless_batches(ctx.data.train, data.batch_size, ctx.recipe.run.seed + 1, workers)
    try:
        yield batches
    finally:
        batches.close()


def _recalibrate(ctx: PhaseContext, model: torch.nn.Module) -> None:
    """BN statistics re-estimated on training batches (no weight change)."""
    steps = ctx.recipe.run.bn_recalibration
    with _training_batches(ctx, steps) as batches:
        recalibrate_bn(model.to(ctx.device), batches, steps, ctx.device)


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, sort_keys=True, default=float) + "\n")


def _finish(
    ctx: PhaseContext,
    final: Path,
    student: torch.nn.Module,
    spec: dict[str, Any] | None,
    kd_state: dict[str, torch.Tensor],
    **record: Any,
) -> Path:
    """Score the trained student on the held-out images, write ``eval.json`` (plus ``record``) and the
    phase's ``student.pt``: on rank 0, the other ranks waiting until the file is there to read."""
    if ctx.info.is_main:
        metrics = evaluate_student(ctx, student)
        _write_json(final.parent / "eval.json", {**metrics, **record})
        save_student(final, student, spec, extra={"eval": metrics, "kd_state": kd_state})
    barrier(ctx.info)
    return final


# ---------------------------------------------------------------------------------- run.start_from


def start_student(ctx: PhaseContext) -> Path:
    """``run.start_from`` saved as the student phase 3 fine-tunes, in place of phases 1 and 2.

    An exported ``.onnx`` is rebuilt (:mod:`trainer.export.from_onnx`) and its folded BNs get the
    statistics of training batches, so that training mode starts from the file's function rather than
    re-normalising convs that already hold their scale. A ``student.pt`` is taken as it is.
    """
    out = ctx.out / "start"
    final = out / "student.pt"
    if final.is_file():
        return final
    source = Path(ctx.recipe.run.start_from)
    imported = None
    if source.suffix.lower() == ".onnx":
        imported = student_from_onnx(source, ctx.recipe.model)
        student, spec, kd_state = imported.model.to(ctx.device), imported.spec, None
    else:
        student, spec = load_student(source)
        kd_state = load_kd_state(source)
    settle = not kd_state and ctx.teacher is not None and ctx.recipe.distill.learn_weights
    steps = max(ctx.recipe.run.bn_recalibration, 1)
    # One stream of training batches for both statistics: the BNs' first, then the KD terms'.
    with _training_batches(ctx, steps * 2) as batches:
        if imported is not None:
            n = restandardise(student, (next(batches)[0].to(ctx.device) for _ in range(steps)))
            log.info("start: %s rebuilt; %d folded BNs given training batches' statistics", source, n)
        if settle:
            kd_state = _settled_kd_state(ctx, student, batches, steps)
    return _finish(ctx, final, student, spec, kd_state or {}, start_from=str(source))


@torch.no_grad()
def _settled_kd_state(
    ctx: PhaseContext, student: torch.nn.Module, batches: Iterator[Any], steps: int
) -> dict[str, torch.Tensor]:
    """The KD weights at their equilibrium for ``student``'s mean KD terms on ``steps`` training
    batches (:meth:`~trainer.loss.distill.DistillLoss.settle`), since an imported file carries none."""
    assert ctx.teacher is not None
    losses = make_losses(ctx.recipe, ctx.recipe.data.img_dim, ctx.device)
    sums = dict.fromkeys(KD_TERMS, 0.0)
    student.eval()
    for _ in range(steps):
        images = next(batches)[0].to(ctx.device)
        weight = losses.kd_anchor_weight.get(images.shape[-1])
        terms = losses.kd.kd_terms(student(images), ctx.teacher(images), weight)
        for name in KD_TERMS:
            sums[name] += float(terms[name]) / steps
    losses.kd.settle(sums)
    log.info(
        "start: KD weights settled on %d batches: %s",
        steps,
        ", ".join(f"{k} {v:.3f}" for k, v in losses.kd.weights().items()),
    )
    return {k: v.cpu() for k, v in losses.kd.state_dict().items()}


# ----------------------------------------------------------------------------------------------- 1


def phase1_distill(ctx: PhaseContext) -> Path:
    """Build Nano-B, initialise it from the teacher (else ImageNet), distil for ``phase1.steps``."""
    out = ctx.out / "phase1"
    final = out / "student.pt"
    if final.is_file():
        return final
    recipe = ctx.recipe
    torch.manual_seed(recipe.run.seed)
    student = NanoB(recipe.model)
    weights = Path(recipe.teacher.weights) if recipe.teacher.weights else None
    if recipe.teacher.init_student and weights is not None and weights.is_file():
        report = init_from_teacher(student, weights)
    else:
        report = init_backbone_imagenet(student, recipe.teacher.imagenet_backbone)
    log.info(report.summary())
    if ctx.info.is_main:
        _write_json(
            out / "init_report.json",
            {
                "summary": report.summary(),
                "copied": report.copied,
                "sliced": report.sliced,
                "fresh": report.fresh,
            },
        )
    if not (ctx.resume and (out / "last.pt").is_file()):
        _recalibrate(ctx, student)

    p1 = recipe.phase1
    kd = train_steps(
        ctx,
        student,
        p1.steps,
        p1.lr_scale,
        out,
        "phase 1: distill",
        cycles=p1.cycles,
        restart_scale=p1.restart_scale,
    )
    return _finish(ctx, final, student, None, kd)


# ----------------------------------------------------------------------------------------------- 2


def phase2_prune(ctx: PhaseContext, phase1: Path) -> Path:
    """B-FPGM: search the rates, soft-prune towards them on a polynomial schedule, remove channels."""
    out = ctx.out / "phase2"
    final = out / "student.pt"
    if final.is_file():
        return final
    recipe, pcfg = ctx.recipe, ctx.recipe.prune
    student, _ = load_student(phase1)
    kd_state = load_kd_state(phase1)
    example = torch.zeros(1, 3, pcfg.trace_size, pcfg.trace_size)
    groups = model_groups(student)
    plan = analyse(student, example, groups, pcfg.channel_multiple)
    # The penalty counts what DESIGN §2 counts: parameters of the exported file (BN folded into convs).
    param_count = ParamCounter(student, groups, example, multiple=pcfg.channel_multiple)

    # 1. Bayesian search: each trial prunes a copy at its rates, recovers briefly, scores held-out data.
    #    Rank 0 alone runs it (one study file, trials one process each); the others wait for its rates.
    alone = ctx.alone()

    def objective(rates: dict[str, float]) -> float:
        trial = copy.deepcopy(student)
        remove_channels(trial, plan.select(trial, rates), example)
        latency = 0.0
        if pcfg.latency_weight:
            ms = onnx_latency_ms(trial, recipe.run.export_size)
            latency = pcfg.latency_weight * ms / ref_ms
            log.info("trial latency %.2f ms (unpruned %.2f ms): +%.3f", ms, ref_ms, latency)
        _recalibrate(ctx, trial)
        train_steps(alone, trial, pcfg.recovery_steps, pcfg.lr_scale, kd_state=kd_state)
        # Lower is better: the held-out MultiBox loss, or minus the mean held-out AP.
        if pcfg.score == "ap":
            aps = list(validation_ap(trial, ctx.data, recipe.split.val_scale).values())
            if aps:
                return latency - sum(aps) / len(aps)
        losses = make_losses(recipe, recipe.data.img_dim, ctx.device)
        return latency + validation_loss(trial, ctx.data, losses, ctx.device, recipe.data.batch_size)

    search_dir = out / "search"
    if not (search_dir / "best_rates.json").is_file() and ctx.info.is_main:
        # The latency term is relative to the unpruned student, so its weight reads "score units per
        # 100 % of the unpruned network's single-thread time". Timed here, on rank 0 alone, as the
        # trials are (with every other rank idle at the barrier below).
        ref_ms = onnx_latency_ms(student, recipe.run.export_size) if pcfg.latency_weight else 0.0
        run_search(objective, param_count, search_dir, _search_config(recipe))
    barrier(ctx.info)
    rates = load_best_rates(search_dir / "best_rates.json")

    # 2. Soft filter pruning: zero the FPGM-least-important filters at evenly spaced boundaries with
    #    the rate rising on the polynomial schedule; zeroed filters keep training and may recover.
    #    The last `settle_fraction` of the steps holds the final selection at zero (re-zeroed before
    #    every step) so the network adapts to its absence while it still trains and removal is exact.
    pruner = SoftPruner(
        student, groups, rates, pcfg.soft_boundaries, example, pcfg.power, pcfg.channel_multiple
    )
    active = max(round(pcfg.soft_steps * (1.0 - pcfg.settle_fraction)), 1)
    every = max(active // pcfg.soft_boundaries, 1)

    def hook(step: int) -> dict[str, float] | None:
        boundary = step // every + 1
        if step % every == 0 and boundary <= pcfg.soft_boundaries:
            applied = pruner.step(boundary)
            return {f"rate_{k}": v for k, v in applied.items()}
        if pruner.done:
            pruner.hold()
        return None

    def load_pruner(extra: dict[str, Any]) -> None:
        if extra:
            pruner.load_state_dict(extra)

    kd_state = train_steps(
        ctx,
        student,
        pcfg.soft_steps,
        pcfg.lr_scale,
        out,
        "phase 2: soft prune",
        hook,
        extra_state=pruner.state_dict,
        load_extra=load_pruner,
        kd_state=kd_state,
    )

    # 3. Physical removal of the filters zeroed at the final rates: the network really shrinks.
    student.cpu()  # the surgery traces on the CPU example input
    selection = pruner.finish()
    params_before = count_params(student)
    remove_channels(student, selection, example)
    spec = prune_spec(student, selection, example, rates, params_before)
    _recalibrate(ctx, student)
    return _finish(ctx, final, student, spec, kd_state, params_before=params_before, rates=rates)


def _search_config(recipe: Any) -> SearchConfig:
    pcfg = recipe.prune
    few = pcfg.trials < MIN_TRIALS
    if few:
        # Smoke runs only: the GP needs >= 15 trials, so fewer means the sampler's random start-up
        # trials; the real recipes use 15-25.
        log.warning(
            "pruning search with %d trials (< %d): random start-up trials only", pcfg.trials, MIN_TRIALS
        )
    return SearchConfig(
        n_trials=pcfg.trials,
        param_range=tuple(pcfg.target_params),
        penalty_weight=pcfg.penalty,
        seed=recipe.run.seed,
        allow_few_trials=few,
    )


# ----------------------------------------------------------------------------------------------- 3


def phase3_finetune(ctx: PhaseContext, phase2: Path) -> Path:
    """Fine-tune the pruned Nano-B at ``phase3.lr_scale`` x the base rate, KD on; export ONNX."""
    out = ctx.out / "phase3"
    final = out / "student.pt"
    if final.is_file():
        return final
    recipe = ctx.recipe
    student, spec = load_student(phase2)
    kd_state = train_steps(
        ctx,
        student,
        recipe.phase3.steps,
        recipe.phase3.lr_scale,
        out,
        "phase 3: fine-tune",
        kd_state=load_kd_state(phase2),
        cycles=recipe.phase3.cycles,
        restart_scale=recipe.phase3.restart_scale,
        freeze_bn=recipe.phase3.freeze_bn,
    )
    record: dict[str, Any] = {}
    if recipe.calibrate.images:
        record["level_calibration"] = _calibrate_levels(ctx, student)
    return _finish(ctx, final, student, spec, kd_state, **record)


def _calibrate_levels(ctx: PhaseContext, student: NanoB) -> list[tuple[float, float]]:
    """Fit each level's face score to the teacher (``calibrate.images`` training images) and fold it
    into the class heads. Every rank fits the same from the same images, so all hold one network."""
    assert ctx.teacher is not None  # the recipe refuses calibrate.images without teacher.weights
    samples = pick_images(real_samples(ctx.data.train), ctx.recipe.calibrate.images)
    student.to(ctx.device)
    scale = ctx.recipe.split.val_scale or None  # the scale the held-out images are scored at
    params = level_calibration(student, ctx.teacher, (s.load_bgr() for s in samples), scale)
    calibrate_face_logits(student.ClassHead, params)
    log.info(
        "calibrated to the teacher on %d training images: face log-odds per level %s",
        len(samples),
        ", ".join(f"{a:.3f} z {b:+.3f}" for a, b in params),
    )
    return params


def _start_provenance(source: Path) -> dict[str, Any]:
    """What the export records of ``run.start_from``: the file, and an ONNX file's own provenance."""
    if source.suffix.lower() != ".onnx":
        return {"file": source.name}
    from edge.model import read_model

    model = read_model(source)
    return {"file": source.name, "weights_sha256": model.meta.weights_sha256, **model.meta.provenance}


def export_student(ctx: PhaseContext, student_file: Path) -> Path:
    """ONNX with the DESIGN §1 metadata at ``run.export_size``; returns the .onnx path."""
    from trainer.export.exporter import export_model

    student, spec = load_student(student_file)
    w, h = ctx.recipe.run.export_size
    rates = (spec or {}).get("rates", {})
    provenance: dict[str, Any] = {
        "teacher": ctx.recipe.teacher.weights,
        "phases": ["distill", "b-fpgm", "finetune"],
        "data": ctx.data.describe(),
        "pruning_rates": rates,
    }
    if ctx.recipe.run.start_from:  # fine-tuned from a trained student: say which, and how it was made
        provenance["phases"] = ["finetune"]
        provenance["start_from"] = _start_provenance(Path(ctx.recipe.run.start_from))
        provenance["pruning_rates"] = rates or provenance["start_from"].get("pruning_rates", {})
    record = student_file.parent / "eval.json"
    calibration = json.loads(record.read_text()).get("level_calibration") if record.is_file() else None
    if calibration:  # the face scores were mapped after training: say so in the file that ships
        provenance["phases"].append("teacher-calibration")
        provenance["level_calibration"] = calibration
    result = export_model(student, ctx.out / "export", "nano_b", width=w, height=h, provenance=provenance)
    return result.files["onnx"]
