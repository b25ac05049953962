"""Both programs' entry points, run as a user runs them: usage errors, --version, one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from edge import __version__

# The entry points of pyproject [project.scripts].
PROGRAMS = {"featherface-edge": "edge.entry", "featherface-train": "trainer.cli"}


def _run(prog: str, *args: str) -> subprocess.CompletedProcess[str]:
    code = f"import sys; sys.argv[0] = {prog!r}; from {PROGRAMS[prog]} import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.parametrize("prog", sorted(PROGRAMS))
def test_version_flag_prints_the_version(prog: str) -> None:
    res = _run(prog, "--version")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == __version__


@pytest.mark.parametrize(
    ("prog", "args", "message"),
    [
        ("featherface-edge", ["detect"], "Missing argument"),
        ("featherface-edge", ["detect", "x.jpg", "--threads", "abc"], "Invalid value for '--threads'"),
        ("featherface-edge", ["no-such-command"], "No such command 'no-such-command'"),
        ("featherface-train", ["evaluate"], "Missing argument"),
        ("featherface-train", ["no-such-command"], "No such command 'no-such-command'"),
    ],
)
def test_usage_errors_are_short_and_exit_2(prog: str, args: list[str], message: str) -> None:
    res = _run(prog, *args)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr
    assert "Traceback" not in res.stderr
    assert f"Usage: {prog}" in res.stderr
    assert len(res.stderr.strip().splitlines()) <= 5


def test_featherface_error_is_one_line_with_its_exit_code(tmp_path) -> None:
    res = _run("featherface-edge", "check-config", str(tmp_path / "missing.toml"))
    assert res.returncode == 2
    assert (
        res.stderr.strip()
        == f"featherface-edge: error: config file {tmp_path / 'missing.toml'} does not exist"
    )


def test_the_daemon_command_reports_like_every_other(tmp_path) -> None:
    """`run` skips the CLI framework (edge.entry) but keeps its errors, help and usage messages."""
    missing = tmp_path / "missing.toml"
    res = _run("featherface-edge", "run", "-c", str(missing))
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        f"featherface-edge: error: config file {missing} does not exist; start from the annotated "
        "example: featherface-edge example-config > edge.toml, then run -c edge.toml"
    ]
    res = _run("featherface-edge", "run", "--help")
    assert res.returncode == 0 and "--config" in res.stdout
    res = _run("featherface-edge", "run", "--config")
    assert res.returncode == 2 and "requires an argument" in res.stderr


def test_help_prints_toml_table_names_verbatim() -> None:
    res = _run("featherface-edge", "demo", "--help")
    assert res.returncode == 0
    assert "[mqtt]" in res.stdout  # rich markup used to swallow it as a style tag
