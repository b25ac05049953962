"""Side-by-side detector comparison: our contract model (FP32, INT8) against the peer detectors.

``python -m benchmarks.compare [--model FILE] [--int8 FILE] [--shared ../shared] [--runs 50]
[--sizes 320x240,640x480] [--out docs/BENCHMARKS.md]`` measures, in one process, on the same images:

- latency (median, p90) of network inference on ONNX Runtime and OpenVINO (plus YuNet through
  ``cv2.FaceDetectorYN``, whose call includes its pre/post-processing), 1 thread and all threads, every
  model timed round-robin within a group so that load from other processes hits them alike;
- WIDER accuracy on ``wider-val-eval`` (200 val images at original resolution; official protocol,
  original size, dump threshold 0.02, each model's published NMS), parameters and MACs;
- model file size and the peak RSS of a separate inference process per model.

It prints a markdown report and writes it into ``--out`` under the heading ``## Detector comparison``
(other sections of that file are kept).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated

import cv2
import numpy as np
import typer

from benchmarks.child import ChildFailed, run_module
from benchmarks.subjects import Subject, collect
from edge.errors import ConfigError, FeatherFaceError, ModelError
from edge.model import default_model_path

ROOT = Path(__file__).resolve().parents[1]
HEADING = "## Detector comparison"
BASELINE = "YuNet-n"
RUNTIMES = ("onnxruntime", "openvino", "opencv")
WARMUP = 5
# AP (easy, medium, hard) the shared README gives for these files, original size: a decoder check.
REFERENCE_AP = {
    "YuNet-n": (88.14, 87.89, 78.48),
    "SCRFD-0.5GF": (86.03, 86.20, 77.81),
    "RetinaFace-mnet0.25": (89.90, 87.78, 70.39),
}


@dataclass
class Latency:
    runtime: str
    threads: int
    size: tuple[int, int]
    input_shape: dict[str, tuple[int, ...]] = field(default_factory=dict)
    ms: dict[str, list[float]] = field(default_factory=dict)

    def stats(self, label: str) -> tuple[float, float] | None:
        """(median, p90) in ms, or None when the model did not run in this group."""
        v = self.ms.get(label)
        return (float(np.median(v)), float(np.percentile(v, 90))) if v else None


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``"320x240,640x480"`` -> ``[(320, 240), (640, 480)]``."""
    sizes = []
    for part in text.split(","):
        try:
            w, h = (int(v) for v in part.lower().split("x"))
        except ValueError:
            w = h = 0
        if w <= 0 or h <= 0:
            raise ConfigError(f"--sizes wants WxH[,WxH...], e.g. 320x240,640x480; got {part!r}")
        sizes.append((w, h))
    return sizes


def frame(shared: Path, w: int, h: int) -> np.ndarray:
    """The image every model is timed on: ``photos/1.jpg`` resized to the frame size (noise if absent)."""
    image = cv2.imread(str(shared / "data" / "photos" / "1.jpg"))
    if image is None:
        return np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)


def measure_latency(
    subjects: list[Subject], runtime: str, threads: int, image: np.ndarray, runs: int
) -> Latency:
    """Warm every applicable model up, then time ``runs`` rounds of one inference each, round-robin.

    Each round starts one model later, so every model runs first as often as ``runs`` allows: on this
    machine the model timed first in a round measured 1–3 % slower than the same graph timed second.
    """
    h, w = image.shape[:2]
    result = Latency(runtime, threads, (w, h))
    calls = {}
    for s in subjects:
        timed = s.timed(runtime, threads, image)
        if timed is None:
            continue
        calls[s.label], result.input_shape[s.label] = timed
        for _ in range(WARMUP):
            calls[s.label]()
    for label in calls:
        result.ms[label] = []
    order = list(calls.items())
    for r in range(runs):
        k = r % len(order) if order else 0
        for label, call in order[k:] + order[:k]:
            t0 = time.perf_counter()
            call()
            result.ms[label].append((time.perf_counter() - t0) * 1e3)
    return result


def measure_accuracy(subject: Subject, wider: Path) -> dict[str, float]:
    """Easy / medium / hard AP (percent) on the WIDER val folder ``wider`` at original size."""
    from trainer.data.wider import load_ground_truth, locate_wider_val
    from trainer.eval.predict import read_image, to_wider
    from trainer.eval.widerface import evaluate

    images, gt_dir = locate_wider_val(wider)
    gt = load_ground_truth(gt_dir)
    detect = subject.detector()
    preds = {(im.event, im.name): to_wider(detect(read_image(images / im.relpath))) for im in gt.images}
    return {k: 100 * v for k, v in evaluate(preds, gt).ap.items()}


def measure_memory(subject: Subject | None, w: int, h: int) -> int:
    """Peak RSS (KiB) of a fresh process that loads ``subject`` and runs it 20 times (None = baseline)."""
    spec = {} if subject is None else {**asdict(subject), "path": str(subject.path)}
    try:
        result = run_module("benchmarks.memprobe", [json.dumps(spec), str(w), str(h)], timeout=300)
    except ChildFailed as exc:
        who = subject.label if subject else "baseline"
        raise ModelError(f"memory probe failed for {who}: {exc.last_line}") from None
    return int(result["maxrss_kib"])


# ----------------------------------------------------------------------------- report


def _fmt_int(v: int | None) -> str:
    return "as FP32" if v is None else f"{v:,}"


def _mmacs(m: tuple[int, tuple[int, int]] | None) -> str:
    return "—" if m is None else f"{m[0] / 1e6:,.0f} ({m[1][0]}×{m[1][1]})"


def latency_table(groups: list[Latency], labels: list[str], runtime: str) -> list[str]:
    """One markdown table per runtime: rows = models, columns = size x threads."""
    mine = [g for g in groups if g.runtime == runtime and g.ms]
    if not mine:
        return []
    heads = [f"{g.size[0]}×{g.size[1]}, {g.threads} thr" for g in mine]
    lines = ["| model | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(mine)]
    for label in labels:
        cells = []
        for g in mine:
            st = g.stats(label)
            base = g.stats(BASELINE) or _baseline_elsewhere(groups, g)
            if st is None:
                cells.append("—")
                continue
            ratio = f" (**{st[0] / base[0]:.2f}×**)" if base else ""
            cells.append(f"{st[0]:.2f} / {st[1]:.2f}{ratio}")
        if any(c != "—" for c in cells):
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _baseline_elsewhere(groups: list[Latency], g: Latency) -> tuple[float, float] | None:
    """OpenCV runs no YuNet-n: its ratios are to YuNet-n on ONNX Runtime at the same size/threads."""
    if g.runtime != "opencv":
        return None
    for o in groups:
        if o.runtime == "onnxruntime" and o.size == g.size and o.threads == g.threads:
            return o.stats(BASELINE)
    return None


def render(info: dict, subjects: list[Subject], rows: dict, groups: list[Latency]) -> str:
    """The whole ``## Detector comparison`` section."""
    labels = [s.label for s in subjects]
    sizes = info["sizes"]
    out = [
        HEADING,
        "",
        f"Command: `{info['command']}`  ",
        f"Date: {info['date']} · machine: {info['cpu']}, {info['cores']} cores, {info['os']} · "
        f"onnxruntime {info['ort']}, OpenVINO {info['ov']}, OpenCV {cv2.__version__}  ",
        f"Load (`uptime` load average 1/5/15 min): {info['load_start']} at start, {info['load_end']} at "
        "end — the machine is shared with other jobs, so absolute times are noisy; ratios within one "
        "table are fairer because every model of a group is timed round-robin (each round starting one "
        "model later, so none is always first).",
        "",
    ]
    out += [f"> {n}" for n in info["notes"]]
    if info["notes"]:
        out.append("")
    out += [
        "### Accuracy and cost",
        "",
        f"WIDER FACE val-eval ({info['wider']}: 200 val images, original resolution), official protocol "
        "via `trainer.eval.widerface`, original image size, dump threshold 0.02, NMS at each model's "
        "published IoU; AP in percent. Parameters = "
        "sum of floating-point initializer sizes in the file (an INT8 file keeps few float tensors). MACs "
        "at the input each model really runs for that frame (stride-padded, or its fixed size). Peak RSS: "
        "a separate process that imports the runtime, loads the model and runs it 20× on ONNX Runtime "
        f"(OpenCV for cv2) at {sizes[-1][0]}×{sizes[-1][1]} (ULFD at its fixed 320×240); the baseline "
        "process imports the same libraries and loads no model. YuNet-n is decoded as OpenCV's "
        "FaceDetectorYN does (score √(cls·obj), NMS without the +1 pixel), which reproduces its reference "
        "AP; the cv2 row is OpenCV's own decoder on the 2023mar model. INT8 accuracy is on ONNX Runtime.",
        "",
        "| model | file | size KiB | params | "
        + " | ".join(f"MMACs @{w}×{h}" for w, h in sizes)
        + " | easy | medium | hard | NMS | peak RSS MiB |",
        "|---|---|---:|---:|" + "---:|" * len(sizes) + "---:|---:|---:|---:|---:|",
    ]
    for s in subjects:
        r = rows[s.label]
        ap = r.get("ap") or {}
        apc = [f"{ap[k]:.2f}" if k in ap else "—" for k in ("easy", "medium", "hard")]
        rss = f"{r['rss'] / 1024:.0f}" if r.get("rss") else "—"
        out.append(
            f"| {s.label} | `{s.path.name}` | {s.file_bytes / 1024:,.0f} | "
            f"{_fmt_int(r['params'])} | "
            + " | ".join(_mmacs(m) for m in r["macs"])
            + f" | {' | '.join(apc)} | {s.nms} | {rss} |"
        )
    if info.get("baseline_rss"):
        out.append(
            "| (baseline process, no model) | | | |"
            + " |" * len(sizes)
            + f" | | | | {info['baseline_rss'] / 1024:.0f} |"
        )
    refs = [f"{k} {' / '.join(f'{v:.2f}' for v in ref)}" for k, ref in REFERENCE_AP.items() if k in rows]
    if refs and any(rows[k].get("ap") for k in REFERENCE_AP if k in rows):
        out += ["", "Reference AP for these files (`../shared/README.md`): " + "; ".join(refs) + "."]
    out += [
        "",
        "### Latency",
        "",
        f"Milliseconds per inference, **median / p90** of {info['runs']} runs after {WARMUP} warm-up runs, "
        f"(**ratio** of the median to {BASELINE} in the same column and runtime). Network inference only "
        "(the input tensor is prepared once from the same photo), except `cv2.FaceDetectorYN`, whose "
        "`detect` includes its resize/pad, decoding and NMS. `N thr` = N intra-op threads "
        f"({info['cores']} = every core of this machine). Runtime settings are the edge's "
        "(`edge/backends.py`): ONNX Runtime "
        "sequential, 1 inter-op thread, no spinning; OpenVINO PERFORMANCE_HINT=LATENCY with "
        "**INFERENCE_PRECISION_HINT=f32 for FP32 models** (this CPU would otherwise run them in bf16); "
        "INT8 models keep OpenVINO's default precision for their non-quantized parts. When other jobs "
        "load the machine, 2 threads can be slower than 1 (the second core is busy elsewhere). Input "
        "tensor sizes: " + info["inputs"] + ".",
        "",
    ]
    titles = {
        "onnxruntime": "ONNX Runtime",
        "openvino": "OpenVINO",
        "opencv": f"OpenCV DNN (ratios to {BASELINE} on ONNX Runtime)",
    }
    for runtime in RUNTIMES:
        table = latency_table(groups, labels, runtime)
        if table:
            out += [f"**{titles[runtime]}**", "", *table, ""]
    return "\n".join(out).rstrip() + "\n"


def write_section(path: Path, section: str) -> None:
    """Replace (or append) the ``## Detector comparison`` section of ``path``, keeping the rest."""
    text = path.read_text() if path.is_file() else "# Benchmarks\n"
    start = text.find(HEADING + "\n")
    if start < 0:
        text = text.rstrip() + "\n\n" + section
    else:
        nxt = text.find("\n## ", start + len(HEADING))
        tail = text[nxt + 1 :] if nxt >= 0 else ""
        text = text[:start] + section + ("\n" + tail if tail else "")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# ----------------------------------------------------------------------------- CLI


def _machine() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    import onnxruntime
    import openvino

    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "os": f"{platform.system()} {platform.release()}",
        "ort": onnxruntime.__version__,
        "ov": openvino.__version__.split("-")[0],
    }


def _load() -> str:
    return " / ".join(f"{v:.2f}" for v in os.getloadavg())


def run(
    model: Path | None,
    int8: Path | None,
    shared: Path,
    runs: int,
    sizes: list[tuple[int, int]],
    label: str | None,
    accuracy: bool,
    command: str,
    also: Sequence[Path] = (),
    log=print,
) -> str:
    """Run every measurement and return the markdown section."""
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)  # the MAC counter's sessions warn about peer graphs
    cv2.utils.logging.setLogLevel(
        cv2.utils.logging.LOG_LEVEL_ERROR
    )  # OpenCV 5 warns once per FaceDetectorYN that DNN targets are ignored
    notes: list[str] = []
    shipped = default_model_path()
    if model is None:
        if shipped.is_file():
            model = shipped
            sibling = shipped.with_name(shipped.stem + ".int8.onnx")
            int8 = int8 or (sibling if sibling.is_file() else None)
        else:
            notes.append(
                f"The shipped Nano-B model ({shipped.relative_to(ROOT)}) does not exist yet: peers only."
            )
            log(f"note: {notes[-1]}")
    for p in (model, int8, *also):
        if p is not None and not p.is_file():
            raise ModelError(f"model file {p} does not exist")
    if label is None and model is not None:
        label = "Nano-B" if model.resolve() == shipped.resolve() else model.stem
    subjects = collect(model, label or "model", int8, shared / "weights" / "peers", also)
    if not any(s.kind != "contract" for s in subjects):
        notes.append(f"No peers found under {shared / 'weights' / 'peers'}.")
    if not subjects:
        raise ConfigError(
            f"nothing to benchmark: no --model and no peers under {shared / 'weights' / 'peers'}"
        )
    info = {**_machine(), "command": command, "runs": runs, "sizes": sizes, "notes": notes}
    info["date"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    info["load_start"] = _load()
    rows: dict[str, dict] = {}
    for s in subjects:
        # an INT8 file stores its weights as integers: its float-initializer count means nothing
        rows[s.label] = {
            "params": None if s.int8 or s.is_ir else s.parameters(),
            "macs": [s.macs(w, h) for w, h in sizes],
        }
    wider = shared / "data" / "wider-val-eval"
    info["wider"] = os.path.relpath(wider, ROOT)
    if accuracy and wider.is_dir():
        for s in subjects:
            if s.is_ir:
                log(f"accuracy {s.label}: skipped (an OpenVINO IR; pass the ONNX for accuracy)")
                continue
            t0 = time.perf_counter()
            rows[s.label]["ap"] = measure_accuracy(s, wider)
            ap = rows[s.label]["ap"]
            log(
                f"accuracy {s.label}: {ap['easy']:.2f} / {ap['medium']:.2f} / {ap['hard']:.2f} "
                f"({time.perf_counter() - t0:.0f} s)"
            )
    else:
        notes.append(f"Accuracy not measured ({'--no-accuracy' if not accuracy else f'{wider} absent'}).")
    groups = []
    # "all threads" is stated as a number: the runtimes' own defaults differ (physical vs logical cores)
    for runtime in RUNTIMES:
        for threads in dict.fromkeys((1, os.cpu_count() or 1)):
            for w, h in sizes:
                g = measure_latency(subjects, runtime, threads, frame(shared, w, h), runs)
                groups.append(g)
                log(
                    f"latency {runtime} {w}x{h} threads={threads}: "
                    + ", ".join(f"{k} {np.median(v):.2f}" for k, v in g.ms.items())
                )
    inputs = {}
    for g in groups:
        for k, shape in g.input_shape.items():
            inputs.setdefault(f"{g.size[0]}×{g.size[1]}", {}).setdefault(f"{shape[3]}×{shape[2]}", set()).add(
                k
            )
    info["inputs"] = "; ".join(
        f"frame {fr} → " + ", ".join(f"{sh} ({', '.join(sorted(ks))})" for sh, ks in d.items())
        for fr, d in inputs.items()
    )
    mw, mh = sizes[-1]
    info["baseline_rss"] = measure_memory(None, mw, mh)
    for s in subjects:
        if s.is_ir:
            continue  # the probe runs ONNX Runtime
        w, h = (320, 240) if s.kind == "peer" and s.peer().fixed_size else (mw, mh)
        rows[s.label]["rss"] = measure_memory(s, w, h)
        log(f"memory {s.label}: {rows[s.label]['rss'] / 1024:.0f} MiB")
    info["load_end"] = _load()
    return render(info, subjects, rows, groups)


app = typer.Typer(add_completion=False, help=__doc__.split("\n\n")[0])


@app.command()
def main(
    model: Annotated[
        Path | None, typer.Option(help="contract ONNX to compare (default: the shipped Nano-B)")
    ] = None,
    int8: Annotated[
        Path | None, typer.Option(help="its INT8 ONNX (default: the shipped .int8.onnx beside it)")
    ] = None,
    shared: Annotated[Path, typer.Option(help="the shared data/weights folder")] = ROOT.parent / "shared",
    runs: Annotated[int, typer.Option(min=1, help="timed runs per model and setting")] = 50,
    sizes: Annotated[str, typer.Option(help="frame sizes WxH, comma-separated")] = "320x240,640x480",
    out: Annotated[Path, typer.Option(help="markdown file to update")] = ROOT / "docs" / "BENCHMARKS.md",
    label: Annotated[
        str | None, typer.Option(help="name of --model in the tables (default: file stem)")
    ] = None,
    accuracy: Annotated[bool, typer.Option(help="run the WIDER accuracy pass")] = True,
    also: Annotated[
        list[Path] | None,
        typer.Option(help="another contract ONNX to time in the same run (repeatable; named by file stem)"),
    ] = None,
) -> None:
    """Latency, accuracy, size and memory of a contract model and the peer detectors, side by side."""
    command = "python -m benchmarks.compare " + shlex.join(sys.argv[1:])
    try:
        section = run(model, int8, shared, runs, parse_sizes(sizes), label, accuracy, command, also or [])
    except FeatherFaceError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(section)
    write_section(out, section)
    typer.echo(f"wrote {out}", err=True)


if __name__ == "__main__":
    app()
