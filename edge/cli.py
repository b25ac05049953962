"""`featherface-edge`: the device CLI. Thin typer commands over plain functions in `edge`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer

from edge import __version__
from edge.console import run_app, version_option
from edge.errors import FeatherFaceError
from edge.service import DEFAULT_CONFIG, run_daemon

EXAMPLE_CONFIG = Path(__file__).with_name("config.example.toml")

app = typer.Typer(
    help="FeatherFace edge daemon: camera -> face detector -> tracker -> MQTT face events.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts name TOML tables like [mqtt]: print them, do not style them
)


@app.callback()
def _root(version: Annotated[bool, version_option(__version__)] = False) -> None:
    """FeatherFace edge daemon."""


@app.command()
def version() -> None:
    """Print the featherface-edge version."""
    typer.echo(__version__)


# --- perception commands: detect, model-info, bench (logic in edge.annotate / edge.model / edge.bench) ---

BackendOpt = Annotated[
    str,
    typer.Option(
        "--backend", help="auto (ONNX Runtime for .onnx, OpenVINO for an IR), onnxruntime or openvino."
    ),
]
ThreadsOpt = Annotated[int, typer.Option("--threads", help="Inference threads (0 = the runtime's default).")]
ProviderOpt = Annotated[
    Optional[list[str]],  # noqa: UP045
    typer.Option(
        "--provider",
        help="ONNX Runtime execution provider, in order of preference (repeatable): cpu, cuda, tensorrt, "
        "openvino or a full name; default: the CPU.",
    ),
]
EngineCacheOpt = Annotated[
    str, typer.Option("--engine-cache", help="Folder for TensorRT's built engines (empty: rebuild each run).")
]
ModelOpt = Annotated[
    Optional[Path],  # noqa: UP045 - typer needs the Optional spelling to see an optional option
    typer.Option(
        "--model", help="ONNX or OpenVINO IR (.xml) model with the FeatherFace metadata; default: bundled."
    ),
]


@contextmanager
def _one_line_errors() -> Iterator[None]:
    """FeatherFaceError -> one stderr line + its exit code, also under CliRunner (no main() there)."""
    try:
        yield
    except FeatherFaceError as exc:
        typer.echo(f"featherface-edge: error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None


@app.command()
def detect(
    images: Annotated[list[Path], typer.Argument(help="Image files, or folders of images, to run on.")],
    model: ModelOpt = None,
    annotate: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--annotate", help="Write annotated copies: a file name for one image, else a folder."),
    ] = None,
    backend: BackendOpt = "auto",
    threads: ThreadsOpt = 2,
    score_threshold: Annotated[
        float, typer.Option("--score-threshold", help="Minimum face score 0..1.")
    ] = 0.6,
    nms_threshold: Annotated[float, typer.Option("--nms-threshold", help="NMS IoU threshold.")] = 0.4,
    provider: ProviderOpt = None,
    engine_cache: EngineCacheOpt = "",
) -> None:
    """Detect faces in images; print one JSON object per image (pixel boxes and landmarks)."""
    import json

    from edge.annotate import detect_file, expand_images
    from edge.detector import load_detector

    with _one_line_errors():
        images = expand_images(images)
        det = load_detector(
            model,
            backend,
            threads,
            score_threshold,
            nms_threshold,
            providers=provider or (),
            engine_cache=engine_cache,
        )
        failed = None
        for image in images:
            try:
                typer.echo(json.dumps(detect_file(det, image, annotate, many=len(images) > 1)))
            except FeatherFaceError as exc:  # report it, go on with the other images
                typer.echo(json.dumps({"image": str(image), "error": str(exc)}))
                typer.echo(f"featherface-edge: error: {exc}", err=True)
                failed = exc
        if failed is not None:
            raise typer.Exit(failed.exit_code)


@app.command("model-info")
def model_info(
    file: Annotated[Path, typer.Argument(help="ONNX file or OpenVINO IR .xml.")],
) -> None:
    """Show a model's FeatherFace metadata, parameter count and inputs/outputs (JSON)."""
    import json

    from edge.model import describe, read_model

    with _one_line_errors():
        typer.echo(json.dumps(describe(read_model(file)), indent=2))


@app.command()
def bench(
    source: Annotated[
        str,
        typer.Option(
            "--source", help="Folder, image, video file, device index, /dev/videoN, URL or 'synthetic'."
        ),
    ] = "synthetic",
    model: ModelOpt = None,
    frames: Annotated[int, typer.Option("--frames", help="Timed frames (after 5 warm-up frames).")] = 100,
    backend: BackendOpt = "auto",
    threads: ThreadsOpt = 2,
    width: Annotated[int, typer.Option("--width", help="Frame width for synthetic/camera sources.")] = 640,
    height: Annotated[int, typer.Option("--height", help="Frame height for synthetic/camera sources.")] = 480,
    score_threshold: Annotated[float, typer.Option("--score-threshold")] = 0.6,
    provider: ProviderOpt = None,
    engine_cache: EngineCacheOpt = "",
) -> None:
    """Measure fps and latency (p50/p90/p99) of the real detect pipeline; prints JSON."""
    import json

    from edge.bench import run_bench, source_config_for
    from edge.detector import load_detector

    with _one_line_errors():
        cfg = source_config_for(source, width, height)
        det = load_detector(
            model, backend, threads, score_threshold, providers=provider or (), engine_cache=engine_cache
        )
        typer.echo(json.dumps(run_bench(det, cfg, frames=frames, threads=threads).as_dict(), indent=2))


# --- messaging/daemon commands: run, check-config, demo (logic in edge.config / edge.daemon / edge.demo) ---

ConfigArg = Annotated[Path, typer.Argument(help="TOML config file (see edge/config.example.toml).")]


@app.command()
def run(
    config: Annotated[Path, typer.Option("--config", "-c", help="TOML config file.")] = DEFAULT_CONFIG,
) -> None:
    """Run the daemon: camera -> detector -> tracker -> MQTT, until SIGTERM/SIGINT."""
    # The console entry runs the plain forms of this command without typer (edge.entry);
    # other spellings of it (`-cFILE`) and the tests' CliRunner come here, to the same function.
    with _one_line_errors():
        code = run_daemon(config)
    raise typer.Exit(code)


@app.command("example-config")
def example_config() -> None:
    """Print the annotated example config (every key, its default and what it does)."""
    typer.echo(EXAMPLE_CONFIG.read_text(encoding="utf-8"), nl=False)


@app.command("check-config")
def check_config(config: ConfigArg) -> None:
    """Validate a config file (plus FEATHERFACE_* overrides) and its model; print it as JSON, secrets
    (passwords, credentials in camera URLs) redacted."""
    import json

    from edge.config import load_config
    from edge.model import read_model

    with _one_line_errors():
        cfg = load_config(config)
        read_model(cfg.detector.model or None)  # what `run` reads first: a corrupt file fails here too
    typer.echo(json.dumps(cfg.redacted(), indent=2, default=str))
    typer.echo(f"{config}: OK", err=True)


@app.command()
def demo(
    model: ModelOpt = None,
    frames: Annotated[int, typer.Option("--frames", help="Frames to run through the pipeline.")] = 30,
    out: Annotated[Path, typer.Option("--out", help="Where to write the annotated image.")] = Path(
        "featherface-demo.jpg"
    ),
    config: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--config", "-c", help="Use this config's [mqtt] broker instead of an embedded one."),
    ] = None,
) -> None:
    """Run the real pipeline on the bundled sample image with an embedded broker; print the events."""
    from edge.demo import run_demo

    with _one_line_errors():
        code = run_demo(model=model, frames=frames, out=out, config=config)
    raise typer.Exit(code)


@app.command()
def serve(
    host: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--host", help="Address to listen on; default: [http] host (127.0.0.1)."),
    ] = None,
    port: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--port", help="TCP port; default: [http] port (5000)."),
    ] = None,
    config: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--config", "-c", help="TOML config: its [http] and [detector] tables."),
    ] = None,
) -> None:
    """Serve DeepStack's face endpoint (POST /v1/vision/face), /healthz and the web page over HTTP."""
    from edge.config import load_config
    from edge.daemon import configure_logging
    from edge.serve import serve as serve_http

    with _one_line_errors():
        cfg = load_config(config)
        configure_logging(cfg.device.log_level)
        code = serve_http(cfg, host, port)
    raise typer.Exit(code)


def main() -> None:
    """Console entry point (`featherface-edge`)."""
    run_app(app, "featherface-edge")
