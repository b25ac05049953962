"""The bundle: every file listed with its sha256, models included when present, reproducible builds."""

from __future__ import annotations

import json
import tarfile
import zipfile
from pathlib import Path

import pytest

from deploy.bundle import REPO, build_bundle
from deploy.install import DeployError, load_bundle, open_bundle, sha256_file
from tests.deploy.deploy_helpers import make_bundle, release_of, run_deploy


def _extract(bundle: Path, dest: Path) -> Path:
    with tarfile.open(bundle) as tar:
        tar.extractall(dest, filter="data")
    (top,) = dest.iterdir()
    return top


def test_bundle_lists_every_file_with_its_hash(tmp_path: Path, wheel: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    for name, data in [("nano.onnx", b"onnx"), ("nano.xml", b"<xml/>"), ("nano.bin", b"\0\1"),
                       ("nano.json", b"{}"), ("notes.txt", b"not a model")]:  # fmt: skip
        (models / name).write_bytes(data)
    bundle = make_bundle(tmp_path / "out", wheel, "m", models=models)
    top = _extract(bundle, tmp_path / "x")
    manifest = json.loads((top / "manifest.json").read_text())

    assert top.name == f"featherface-{manifest['release']}" == bundle.name.removesuffix(".tar.gz")
    assert manifest["version"] == "0.1.0" and manifest["release"].startswith("0.1.0-")
    assert manifest["entry_point"] == "featherface-edge"
    assert manifest["models"] == [f"models/nano.{ext}" for ext in ("bin", "json", "onnx", "xml")]
    on_disk = {str(p.relative_to(top)) for p in top.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(manifest["files"]) == on_disk  # nothing unlisted, nothing missing (notes.txt left out)
    for rel, meta in manifest["files"].items():
        assert meta == {"sha256": sha256_file(top / rel), "size": (top / rel).stat().st_size}
    assert (top / "install.py").read_bytes() == (REPO / "deploy" / "install.py").read_bytes()
    assert (top / "install.py").stat().st_mode & 0o111
    names = zipfile.ZipFile(top / manifest["wheel"]).namelist()
    assert "edge/__init__.py" in names and not any(n.startswith(("deploy/", "tests/")) for n in names)


def test_same_inputs_same_bundle_a_change_new_release(tmp_path: Path, wheel: Path) -> None:
    one = make_bundle(tmp_path / "1", wheel, "same")
    two = make_bundle(tmp_path / "2", wheel, "same")
    assert one.read_bytes() == two.read_bytes()
    other = make_bundle(tmp_path / "3", wheel, "changed")
    assert release_of(other) != release_of(one)


def test_bundle_without_models_is_fine(bundles: tuple[Path, Path]) -> None:
    with open_bundle(bundles[0]) as top:
        manifest = load_bundle(top)
    assert manifest["models"] == [] and not any(f.startswith("models/") for f in manifest["files"])


def test_installer_refuses_an_altered_bundle(tmp_path: Path, bundles: tuple[Path, Path]) -> None:
    top = _extract(bundles[0], tmp_path)
    (top / "systemd" / "featherface-edge.service").write_text("[Service]\nExecStart=/bin/sh -c evil\n")
    with pytest.raises(DeployError, match=r"systemd/featherface-edge.service: sha256 mismatch"):
        load_bundle(top)
    proc = run_deploy("install", top, "--root", tmp_path / "root", "--no-systemctl", check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "featherface-install: error: bundle file systemd/featherface-edge.service: sha256 mismatch "
        "(corrupt or altered bundle)"
    ]
    assert not (tmp_path / "root").exists()


def test_build_cli_names_a_missing_config(tmp_path: Path, wheel: Path) -> None:
    missing = tmp_path / "nope.toml"
    proc = run_deploy("build", "--out", tmp_path, "--wheel", wheel, "--config", missing, check=False)
    assert proc.returncode == 1
    assert "example config" in proc.stderr and "nope.toml" in proc.stderr
    with pytest.raises(DeployError, match="not found"):
        build_bundle(tmp_path, wheel=wheel, config=tmp_path / "nope.toml")


def test_build_cli_builds_the_wheel_itself(tmp_path: Path) -> None:
    config = tmp_path / "edge.toml"
    config.write_text("# cli\n")
    proc = run_deploy("build", "--out", tmp_path / "dist", "--config", config, "--models", tmp_path / "none")
    bundle = Path(proc.stdout.strip().splitlines()[-1])
    assert bundle.parent == tmp_path / "dist" and bundle.is_file()
    with open_bundle(bundle) as top:
        assert load_bundle(top)["wheel"].startswith("wheels/featherface-0.1.0-")
