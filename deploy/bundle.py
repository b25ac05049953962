"""Build the deploy bundle: one ``.tar.gz`` with everything a device needs and nothing it must download
but the wheel's dependencies.

    featherface-<release>/
        manifest.json                 versions, release id, sha256 and size of every other file
        install.py                    deploy/install.py (stdlib only; runs with the device's python3)
        wheels/featherface-<v>-py3-none-any.whl
        models/*.onnx *.xml *.bin     whatever edge/models holds (possibly nothing) + IR sidecar .json
        config/edge.example.toml      written to /etc/featherface/edge.toml when that is absent
        systemd/featherface-edge.service
        docs/deploy.md

The release id is ``<version>-<first 12 hex of the sha256 over the file hashes>``: the same sources give
the same id (the wheel and the tar are built reproducibly), so re-deploying an unchanged tree is a no-op
on the devices, and any change to code, model, config or unit gives a new release that can be rolled back.
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from pathlib import Path

from deploy.install import MANIFEST, UNIT_NAME, DeployError, sha256_file

REPO = Path(__file__).resolve().parents[1]
MODEL_SUFFIXES = (".onnx", ".xml", ".bin")
BUNDLE_FORMAT = 1
# 1980-01-01, the earliest date a zip can hold: a fixed SOURCE_DATE_EPOCH makes the wheel reproducible.
SOURCE_DATE_EPOCH = 315532800


def _pyproject(repo: Path) -> dict:
    try:
        return tomllib.loads((repo / "pyproject.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise DeployError(f"{repo / 'pyproject.toml'}: {exc}") from None


def build_wheel(out_dir: Path, repo: Path = REPO, python: str = sys.executable) -> Path:
    """Build the project wheel offline into ``out_dir`` and return its path.

    It builds from a clean copy of the top-level files and the packages pyproject includes, so a stale
    ``build/lib`` cannot leak deleted modules into the wheel and the checkout gets no build litter.
    """
    patterns = _pyproject(repo)["tool"]["setuptools"]["packages"]["find"]["include"]
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="featherface-wheel-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for item in sorted(repo.iterdir()):
            if item.is_file() and not item.name.startswith("."):
                shutil.copy2(item, src / item.name)
            elif item.is_dir() and any(fnmatch.fnmatch(item.name, p) for p in patterns):
                shutil.copytree(item, src / item.name, ignore=ignore)
        before = set(out_dir.glob("*.whl"))
        cmd = [python, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-cache-dir"]
        cmd += ["--disable-pip-version-check", "--quiet", "--wheel-dir", str(out_dir), str(src)]
        env = {**os.environ, "SOURCE_DATE_EPOCH": str(SOURCE_DATE_EPOCH)}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        hint = lines[-1].strip() if lines else "see pip's output above"
        raise DeployError(f"wheel build failed: {hint} (needs setuptools>=68 in {python}'s environment)")
    name = _pyproject(repo)["project"]["name"].replace("-", "_")
    wheels = sorted(out_dir.glob(f"{name}-*.whl"), key=lambda p: (p not in before, p.stat().st_mtime))
    if not wheels:
        raise DeployError(f"pip wheel left no {name}-*.whl in {out_dir}")
    return wheels[-1]


def _models(models_dir: Path | None) -> list[Path]:
    """Model files (.onnx, OpenVINO .xml/.bin) and the metadata sidecar .json of an IR."""
    if models_dir is None or not models_dir.is_dir():
        return []
    files = sorted(p for p in models_dir.iterdir() if p.is_file() and p.suffix in MODEL_SUFFIXES)
    sidecars = [p.with_suffix(".json") for p in files if p.suffix == ".xml"]
    return files + [p for p in sidecars if p.is_file()]


def _git_head(repo: Path) -> str | None:
    try:
        proc = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True)
    except OSError:
        return None
    if proc.returncode != 0:
        return None
    return proc.stdout.strip() or None


def _tarinfo(info: tarfile.TarInfo) -> tarfile.TarInfo:
    # Owner, time and mode carry nothing a device needs; fixing them makes the tar reproducible.
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mtime = SOURCE_DATE_EPOCH
    info.mode = 0o755 if info.isdir() or info.name.endswith("/install.py") else 0o644
    return info


def build_bundle(
    out_dir: Path,
    *,
    repo: Path = REPO,
    wheel: Path | None = None,
    config: Path | None = None,
    models_dir: Path | None = None,
) -> Path:
    """Build ``out_dir/featherface-<release>.tar.gz`` and return its path.

    ``wheel`` reuses a built wheel (else one is built); ``config`` defaults to edge/config.example.toml
    and ``models_dir`` to edge/models (absent or empty is fine: the bundle then carries no model).
    """
    config = config or repo / "edge" / "config.example.toml"
    if not config.is_file():
        raise DeployError(f"example config {config} not found (pass --config FILE)")
    unit = repo / "systemd" / UNIT_NAME
    if not unit.is_file():
        raise DeployError(f"systemd unit {unit} not found")
    project = _pyproject(repo)["project"]
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="featherface-bundle-") as tmp:
        stage = Path(tmp)
        wheel = wheel or build_wheel(stage / "build", repo)
        placed: dict[str, Path] = {
            f"wheels/{wheel.name}": wheel,
            "install.py": repo / "deploy" / "install.py",
            f"systemd/{UNIT_NAME}": unit,
            "config/edge.example.toml": config,
        }
        if (repo / "docs" / "deploy.md").is_file():
            placed["docs/deploy.md"] = repo / "docs" / "deploy.md"
        models = _models(models_dir if models_dir is not None else repo / "edge" / "models")
        placed.update({f"models/{m.name}": m for m in models})
        files = {rel: {"sha256": sha256_file(src), "size": src.stat().st_size} for rel, src in placed.items()}
        digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
        release = f"{project['version']}-{digest[:12]}"
        manifest = {
            "format": BUNDLE_FORMAT,
            "name": project["name"],
            "version": project["version"],
            "release": release,
            "requires_python": project.get("requires-python", ""),
            "entry_point": "featherface-edge",
            "wheel": f"wheels/{wheel.name}",
            "unit": f"systemd/{UNIT_NAME}",
            "config": "config/edge.example.toml",
            "models": sorted(f"models/{m.name}" for m in models),
            "git_head": _git_head(repo),
            "files": files,
        }
        manifest_path = stage / MANIFEST
        manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        placed[MANIFEST] = manifest_path
        top = f"featherface-{release}"
        out = out_dir / f"{top}.tar.gz"
        tmp_out = out.with_name(f".{out.name}.tmp")
        # mtime=0 in the gzip header: the same inputs give a byte-identical bundle.
        with (
            open(tmp_out, "wb") as raw,
            gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz,
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            dirs = sorted({str(Path(rel).parent) for rel in placed} - {"."})
            for d in ["", *dirs]:
                info = tarfile.TarInfo(f"{top}/{d}".rstrip("/"))
                info.type = tarfile.DIRTYPE
                tar.addfile(_tarinfo(info))
            for rel in sorted(placed):
                tar.add(placed[rel], arcname=f"{top}/{rel}", recursive=False, filter=_tarinfo)
        os.replace(tmp_out, out)
    return out
