"""The comparison's pieces: size parsing, the doc section, ratios, real timing and memory probes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.compare import (
    HEADING,
    WARMUP,
    Latency,
    latency_table,
    measure_latency,
    measure_memory,
    parse_sizes,
    write_section,
)
from benchmarks.subjects import collect
from edge.errors import ConfigError
from tests.shared_paths import need_shared


def test_parse_sizes() -> None:
    assert parse_sizes("320x240,640X480") == [(320, 240), (640, 480)]
    for bad in ("320", "0x240", "axb", "320x240,"):
        with pytest.raises(ConfigError, match="--sizes"):
            parse_sizes(bad)


def test_write_section_replaces_only_its_own_section(tmp_path: Path) -> None:
    doc = tmp_path / "BENCHMARKS.md"
    write_section(doc, f"{HEADING}\n\nfirst\n")
    assert doc.read_text().startswith("# Benchmarks\n")
    doc.write_text(doc.read_text() + "\n## Edge pipeline fps\n\nkeep me\n")
    write_section(doc, f"{HEADING}\n\nsecond\n")
    text = doc.read_text()
    assert "second" in text and "first" not in text
    assert text.count(HEADING) == 1 and "## Edge pipeline fps\n\nkeep me" in text


def test_latency_table_gives_ratios_to_yunet_in_the_same_column() -> None:
    g = Latency("onnxruntime", 1, (320, 240), ms={"YuNet-n": [2.0, 2.0, 4.0], "Ours": [3.0, 3.0, 3.0]})
    lines = latency_table([g], ["Ours", "YuNet-n", "Absent"], "onnxruntime")
    assert lines[0] == "| model | 320×240, 1 thr |"
    assert lines[2] == "| Ours | 3.00 / 3.00 (**1.50×**) |"
    assert lines[3].startswith("| YuNet-n | 2.00 / ") and "1.00×" in lines[3]
    assert len(lines) == 4  # a model that never ran gets no row
    cv = Latency("opencv", 1, (320, 240), ms={"YuNet (cv2)": [4.0]})
    assert "2.00×" in latency_table([g, cv], ["YuNet (cv2)"], "opencv")[2]


def test_every_model_runs_first_in_a_round_equally_often() -> None:
    calls: list[str] = []

    class Recorder:  # what measure_latency asks of a subject: a label and a timed call
        def __init__(self, label: str) -> None:
            self.label = label

        def timed(self, runtime: str, threads: int, image: np.ndarray) -> tuple:
            return (lambda: calls.append(self.label)), (1, 3, 8, 8)

    subjects = [Recorder(name) for name in "ABC"]
    lat = measure_latency(subjects, "onnxruntime", 1, np.zeros((8, 8, 3), np.uint8), runs=6)  # type: ignore[arg-type]
    rounds = [calls[i : i + 3] for i in range(3 * WARMUP, len(calls), 3)]
    assert [r[0] for r in rounds] == list("ABCABC")
    assert all(sorted(r) == list("ABC") for r in rounds)
    assert {k: len(v) for k, v in lat.ms.items()} == {"A": 6, "B": 6, "C": 6}


def test_real_latency_and_memory_of_a_peer() -> None:
    root = need_shared("weights/peers/yunet_n_dynamic.onnx").parent
    yunet = [s for s in collect(None, "", None, root) if s.label == "YuNet-n"]
    image = np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    lat = measure_latency(yunet, "onnxruntime", 1, image, runs=3)
    assert lat.input_shape["YuNet-n"] == (1, 3, 256, 320)  # padded to a multiple of 32
    assert len(lat.ms["YuNet-n"]) == 3 and all(v > 0 for v in lat.ms["YuNet-n"])
    assert measure_latency(yunet, "opencv", 1, image, runs=1).ms == {}  # ORT/OV model only
    base, with_model = measure_memory(None, 320, 240), measure_memory(yunet[0], 320, 240)
    assert base > 20_000 and with_model > base  # KiB; the model and its session cost something


def test_cli_names_a_missing_model_in_one_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from benchmarks.compare import app

    res = CliRunner().invoke(app, ["--model", str(tmp_path / "nope.onnx"), "--out", str(tmp_path / "b.md")])
    assert res.exit_code == 2
    assert "nope.onnx does not exist" in res.output
    assert not (tmp_path / "b.md").exists()


@pytest.mark.slow
def test_cli_benchmarks_the_peers_alone_when_no_model_is_shipped(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from benchmarks.compare import app
    from edge.model import default_model_path

    if default_model_path().is_file():
        pytest.skip("a Nano-B model is shipped: the peers-only path does not apply")
    shared = need_shared("weights/peers").parents[1]
    out = tmp_path / "b.md"
    args = ["--shared", str(shared), "--runs", "2", "--sizes", "320x240", "--no-accuracy", "--out", str(out)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    text = out.read_text()
    assert "does not exist yet: peers only" in text
    assert "| YuNet-n | `yunet_n_dynamic.onnx` |" in text and "(**1.00×**)" in text
