"""What each Nano-B module costs in time: the network with one module switched off at a time, timed
against the whole network and YuNet-n, one thread, round-robin (``benchmarks.compare``'s timer).

``python -m benchmarks.module_cost [--student FILE] [--size 320x240] [--runs 50]``

Each variant is Nano-B with one ``[model]`` switch changed (``trainer.models.nano_b.NanoBConfig``),
resized to the channel widths of ``--student`` (a pruned ``student.pt``: the shipped widths) where its
layers still exist, exported by the trainer's own exporter (ONNX with the graph rewrites, and the
OpenVINO IR), and timed on ONNX Runtime and OpenVINO with the edge's settings on a real photo. The
weights are untrained: time does not depend on them. Variants whose widths no longer fit together
(SSH off under a pruned spec) are reported as skipped. The result says what an architecture change
would buy before any training is spent on it.
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from benchmarks.compare import frame, measure_latency, parse_sizes
from benchmarks.subjects import Subject

ROOT = Path(__file__).resolve().parents[1]

# (label, NanoBConfig changes). "lean" switches off every attention / enhancement block at once.
VARIANTS: list[tuple[str, dict]] = [
    ("whole network", {}),
    ("no backbone CBAM", {"backbone_cbam": False}),
    ("no post-BiFPN CBAM", {"post_cbam": False}),
    ("no ASSN", {"assn": False}),
    ("no semantic enhancement", {"semantic_enhancement": False}),
    ("no scale decoupling", {"scale_decoupling": False}),
    ("no shuffle block", {"shuffle_block": False}),
    ("BiFPN 2 cells", {"bifpn_cells": 2}),
    ("BiFPN 1 cell", {"bifpn_cells": 1}),
    (
        "lean: no CBAM, ASSN, SE, SD",
        {
            "backbone_cbam": False,
            "post_cbam": False,
            "assn": False,
            "semantic_enhancement": False,
            "scale_decoupling": False,
        },
    ),
    (
        "lean + BiFPN 1 cell",
        {
            "backbone_cbam": False,
            "post_cbam": False,
            "assn": False,
            "semantic_enhancement": False,
            "scale_decoupling": False,
            "bifpn_cells": 1,
        },
    ),
]


def build_variant(changes: dict, student: Path | None):
    """Nano-B with ``changes`` at the student's widths (or the default widths without a student)."""
    import torch

    from trainer.models.files import load_student
    from trainer.models.nano_b import NanoB, apply_channel_spec

    if student is None:
        from trainer.models.nano_b import NanoBConfig

        return NanoB(dataclasses.replace(NanoBConfig(), **changes))
    base, _ = load_student(student)
    net = NanoB(dataclasses.replace(base.cfg, **changes))
    names = {n for n, _ in net.named_modules()}
    spec = {
        k.removesuffix(".weight"): list(v.shape)
        for k, v in base.state_dict().items()
        if k.endswith(".weight") and k.removesuffix(".weight") in names
    }
    apply_channel_spec(net, spec)
    with torch.no_grad():
        net.eval()(torch.zeros(1, 3, 64, 64))  # the widths fit together, or this raises
    return net


def main(
    student: Annotated[Path | None, typer.Option(help="A pruned student.pt whose widths to use.")] = None,
    size: Annotated[str, typer.Option(help="Frame size WxH.")] = "320x240",
    runs: Annotated[int, typer.Option(help="Timed rounds (round-robin over every file).")] = 50,
    shared: Annotated[Path, typer.Option(help="The ../shared folder (photo, YuNet-n).")] = ROOT.parent
    / "shared",
) -> None:
    """Time every variant and YuNet-n; print a markdown table of medians and ratios."""
    from trainer.eval.complexity import count_macs
    from trainer.export.exporter import export_model
    from trainer.prune.surgery import count_params

    ((w, h),) = parse_sizes(size)
    image = frame(shared, w, h)
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        subjects: list[Subject] = []
        for i, (label, changes) in enumerate(VARIANTS):
            try:
                net = build_variant(changes, student)
            except Exception as exc:  # a variant whose pruned widths do not chain
                rows[label] = {"skipped": str(exc).splitlines()[0][:80]}
                continue
            res = export_model(net, Path(tmp) / str(i), "v", formats=("onnx", "openvino"), width=w, height=h)
            rows[label] = {"params": count_params(net), "mmacs": count_macs(net.eval(), w, h) / 1e6}
            subjects += [
                Subject(label, "contract", res.files["onnx"], 0.4),
                Subject(label + " (IR)", "contract", res.files["openvino"], 0.4),
            ]
        yunet = shared / "weights" / "peers" / "yunet_n_dynamic.onnx"
        if yunet.is_file():
            subjects.append(Subject("YuNet-n", "peer", yunet, 0.45, peer_name="YuNet-n"))
        ort = measure_latency([s for s in subjects if not s.is_ir], "onnxruntime", 1, image, runs)
        ov_subjects = [s for s in subjects if s.is_ir or s.kind == "peer"]
        ov = measure_latency(ov_subjects, "openvino", 1, image, runs)
    med = {k: statistics.median(v) for k, v in ort.ms.items()}
    med_ov = {k.removesuffix(" (IR)"): statistics.median(v) for k, v in ov.ms.items()}
    refs = (med["whole network"], med.get("YuNet-n"), med_ov["whole network"], med_ov.get("YuNet-n"))

    def cells(label: str) -> str:
        a, b = med[label], med_ov[label]
        ratios = [
            f"{x / r:.2f}" if r else "–" for x, r in ((a, refs[0]), (a, refs[1]), (b, refs[2]), (b, refs[3]))
        ]
        return f"{a:.2f} | {ratios[0]} | {ratios[1]} | {b:.2f} | {ratios[2]} | {ratios[3]}"

    print(f"{w}x{h} frame, 1 thread, median of {runs} round-robin runs; widths: {student or 'default'}\n")
    print(
        "| variant | params | MMACs | ORT ms | vs whole | vs YuNet-n | OpenVINO ms | vs whole | vs YuNet-n |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, _ in VARIANTS:
        r = rows[label]
        if "skipped" in r:
            print(f"| {label} | skipped: {r['skipped']} | | | | | | | |")
        else:
            print(f"| {label} | {r['params']:,} | {r['mmacs']:.0f} | {cells(label)} |")
    if refs[1] and refs[3]:
        print(f"| YuNet-n | | | {cells('YuNet-n')} |")


if __name__ == "__main__":
    typer.run(main)
