"""`featherface-train`: the desktop CLI. Thin typer commands over plain functions in `trainer`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edge import __version__
from edge.console import run_app, version_option

app = typer.Typer(
    help="FeatherFace trainer: V1 teacher, Nano-B distillation / B-FPGM pruning / fine-tuning, "
    "WIDER FACE evaluation and export.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help and plain two-line usage errors
)


@app.callback()
def _root(version: Annotated[bool, version_option(__version__)] = False) -> None:
    """FeatherFace trainer."""


@app.command()
def evaluate(
    model: Annotated[Path, typer.Argument(help=".pth checkpoint, .onnx file, or a WIDER prediction folder.")],
    wider_val: Annotated[
        Path, typer.Option("--wider-val", help="Folder with WIDER_val/images and ground_truth/*.mat.")
    ],
    arch: Annotated[
        str | None,
        typer.Option(help="Network of a bare state dict: nano-b (V1 files are recognised by their keys)."),
    ] = None,
    scale: Annotated[str, typer.Option(help="'original', or N: resize the longer side to N.")] = "original",
    predictions: Annotated[Path | None, typer.Option(help="Write <event>/<name>.txt here.")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Evaluate the first K images only.")] = None,
    out: Annotated[Path | None, typer.Option(help="Folder for the PR-curve PNGs.")] = None,
    events: Annotated[
        str | None, typer.Option(help="Only these event numbers, e.g. 0,3,9 (a held-out split).")
    ] = None,
) -> None:
    """Official WIDER FACE easy/medium/hard AP, parameters and MACs of MODEL; PR curves as PNG."""
    from trainer.eval.report import run_evaluation

    try:
        event_list = [int(e) for e in events.split(",")] if events else None
    except ValueError:
        raise typer.BadParameter(f"--events wants comma-separated numbers, got {events!r}") from None
    report = run_evaluation(model, wider_val, arch, scale, predictions, limit, out, events=event_list)
    for line in report.lines():
        typer.echo(line)


@app.command()
def v1(
    config: Annotated[
        Path | None, typer.Option(help="Training config (TOML); default: the shipped v1.toml.")
    ] = None,
    data: Annotated[Path | None, typer.Option(help="RetinaFace label.txt (sets data.label_file).")] = None,
    out: Annotated[Path | None, typer.Option(help="Run folder (overrides run.out_dir).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from OUT/last.pt.")] = False,
) -> None:
    """Train the V1 teacher with the MultiBox loss (DDP when launched by torchrun)."""
    import logging

    from trainer.engine.v1 import DEFAULT_V1_CONFIG, load_v1_config, train_v1

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    result = train_v1(load_v1_config(config or DEFAULT_V1_CONFIG, data, out), resume=resume)
    if result.final_weights is not None:
        typer.echo(f"trained {result.state.step} steps; weights: {result.final_weights}")


@app.command()
def export(
    model: Annotated[
        Path,
        typer.Argument(help="A model file the trainer wrote (last.pt, student.pt...) or the official V1."),
    ],
    fmt: Annotated[str, typer.Option("--format", help="onnx, openvino, torchscript or all.")] = "onnx",
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("export"),
    arch: Annotated[
        str | None,
        typer.Option(help="Network of a bare state dict: nano-b (V1 files are recognised by their keys)."),
    ] = None,
    name: Annotated[str | None, typer.Option(help="File stem and model name (default: the arch).")] = None,
    version: Annotated[str, typer.Option(help="Model version recorded in the metadata.")] = "0.1.0",
    size: Annotated[str, typer.Option(help="Nominal input WxH stored in the metadata.")] = "640x480",
    static: Annotated[bool, typer.Option("--static", help="Fix the input size (default: dynamic).")] = False,
    int8: Annotated[bool, typer.Option("--int8", help="Also write INT8 models (needs --calib).")] = False,
    calib: Annotated[Path | None, typer.Option(help="Folder of calibration images for --int8.")] = None,
) -> None:
    """Write self-describing ONNX / OpenVINO IR / TorchScript files (and INT8) of MODEL."""
    from trainer.export import export_model
    from trainer.export.exporter import FORMATS, ExportError
    from trainer.models.files import load_model

    try:
        width, height = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise ExportError(f"--size must look like 640x480, got {size!r}") from None
    formats = FORMATS if fmt == "all" else tuple(f.strip() for f in fmt.split(","))
    net, arch_name = load_model(model, arch)
    result = export_model(
        net,
        out,
        name=name or arch_name.replace("_", "-"),
        version=version,
        formats=formats,
        width=width,
        height=height,
        dynamic=not static,
        int8=int8,
        calib_images=calib or (),
        provenance={"source_checkpoint": str(model), "arch": arch_name},
    )
    typer.echo(f"parameters in the exported file: {result.meta.parameters:,}")
    for kind, path in result.files.items():
        typer.echo(f"{kind}: {path} ({path.stat().st_size / 1e6:.3f} MB)")


@app.command("import-onnx")
def import_onnx(
    model: Annotated[
        Path, typer.Argument(help="An exported Nano-B .onnx (edge/models/featherface-nano-b.onnx).")
    ],
    out: Annotated[Path, typer.Option(help="The student file to write.")] = Path("student.pt"),
    config: Annotated[
        Path | None,
        typer.Option(help="Pipeline TOML of the [model] table it was trained with (older files only)."),
    ] = None,
    images: Annotated[
        Path | None,
        typer.Option(help="Folder of photos that give the folded BNs their statistics (for training)."),
    ] = None,
) -> None:
    """Rebuild the trainable Nano-B an ONNX file was exported from (its outputs checked against the file)."""
    import torch

    from trainer.eval.predict import preprocess, read_image, torch_runner
    from trainer.export.from_onnx import restandardise, student_from_onnx
    from trainer.models.files import save_student
    from trainer.pipeline.recipe import load_recipe

    cfg = load_recipe(config).model if config else None
    imported = student_from_onnx(model, cfg)
    if images is not None:
        if not images.is_dir():
            raise typer.BadParameter(f"not a folder: {images}", param_hint="--images")
        files = sorted(p for p in images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:32]
        if not files:
            raise typer.BadParameter(f"no .jpg/.png files in {images}", param_hint="--images")
        runner = torch_runner(imported.model)
        blobs = (torch.from_numpy(preprocess(read_image(f), runner, 640)[0]) for f in files)
        typer.echo(f"BN statistics from {len(files)} photos: {restandardise(imported.model, blobs)} BNs")
    save_student(out, imported.model, imported.spec, extra={"start_from": str(model)})
    params = sum(p.numel() for p in imported.model.parameters())
    typer.echo(f"{out}: Nano-B, {params:,} parameters before BN folding, {len(imported.spec)} layers")


@app.command()
def info(
    arch: Annotated[
        str | None,
        typer.Option(
            help="Registered model variant: nano-b (default) or v1; with --weights, a bare state dict's."
        ),
    ] = None,
    config: Annotated[Path | None, typer.Option(help="Nano-B pipeline TOML: use its [model] table.")] = None,
    weights: Annotated[
        Path | None,
        typer.Option(help="A model file (V1 or Nano-B, pruned widths included); replaces --arch."),
    ] = None,
    depth: Annotated[int, typer.Option(help="Module depth of the table (1 = top-level modules).")] = 1,
) -> None:
    """Per-module parameter table, total parameters and MACs at 320x240 and 640x480."""
    from trainer.models.files import load_model
    from trainer.pipeline.info import build_for_info, model_info, print_info

    model = load_model(weights, arch)[0] if weights else build_for_info(arch or "nano_b", config)
    print_info(f"{weights or arch or 'nano_b'}", model_info(model, depth))


@app.command("nano-b")
def nano_b(
    config: Annotated[Path, typer.Option(help="Pipeline TOML, e.g. trainer/configs/nano_b_cpu.toml.")],
    out: Annotated[Path | None, typer.Option(help="Output folder (default: [run] out_dir).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue a killed run in the same folder.")] = False,
    until: Annotated[
        str, typer.Option(help="Stop after this phase: phase1, phase2 or phase3 (the whole run).")
    ] = "phase3",
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a config key, TOML value: --set distill.alpha=0 (repeatable)."),
    ] = None,
) -> None:
    """Nano-B: distill from V1, B-FPGM prune, fine-tune, export ONNX (three resumable phases)."""
    import json
    import logging
    import os

    from trainer.config import override, parse_assignments
    from trainer.pipeline.recipe import load_recipe
    from trainer.pipeline.run import run_nano_b

    # Our own progress at INFO; the exporters' chatty INFO logs (onnxscript passes) stay quiet.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    main_rank = os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 alone reports progress
    logging.getLogger("trainer").setLevel(logging.INFO if main_rank else logging.WARNING)
    recipe = load_recipe(config)
    if set_:
        recipe = override(recipe, parse_assignments(set_), source="--set")
    summary = run_nano_b(recipe, out, resume, until)
    if main_rank:
        typer.echo(json.dumps(summary, indent=1, default=str))


def main() -> None:
    """Console entry point (`featherface-train`)."""
    run_app(app, "featherface-train")
