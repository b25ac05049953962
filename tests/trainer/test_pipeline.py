"""The Nano-B pipeline: event split, configs, student files, BN recalibration, and a tiny end-to-end run."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from edge.anchors import prior_boxes
from edge.errors import ConfigError
from tests.shared_paths import need_shared
from tests.tiny_nano_b import tiny_recipe
from trainer.models.files import load_student, save_student
from trainer.models.nano_b import NanoB
from trainer.pipeline.data import event_number, split_wider
from trainer.pipeline.loop import recalibrate_bn
from trainer.pipeline.recipe import load_recipe

CONFIGS = Path(__file__).resolve().parents[2] / "trainer" / "configs"


@pytest.mark.parametrize("name", ["nano_b_cpu.toml", "nano_b_gpu.toml", "nano_b_shared_gpu.toml"])
def test_shipped_configs_load(name: str) -> None:
    recipe = load_recipe(CONFIGS / name)
    assert recipe.distill.alpha == 0.7 and recipe.distill.temperature == 4.0
    assert recipe.prune.trials >= 15
    assert recipe.phase3.lr_scale < 1.0  # fine-tuning at a reduced rate


def test_config_unknown_key_names_table(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[prune]\ntrails = 3\n")
    with pytest.raises(ConfigError, match="trails"):
        load_recipe(bad)


def test_set_assignments_override_the_recipe() -> None:
    from trainer.config import override, parse_assignments

    values = parse_assignments(
        ["distill.alpha=0", "run.device=cuda", 'data.pseudo_images=""', "run.export=false"]
    )
    assert values == {"distill.alpha": 0, "run.device": "cuda", "data.pseudo_images": "", "run.export": False}
    recipe = override(load_recipe(CONFIGS / "nano_b_cpu.toml"), values, source="--set")
    assert recipe.distill.alpha == 0.0 and recipe.run.device == "cuda" and not recipe.run.export
    assert recipe.prune.trials == 15  # the rest comes from the file
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_assignments(["distill.alpha"])
    with pytest.raises(ConfigError, match=r"--set: unknown key 'distill\.alfa'"):
        override(recipe, {"distill.alfa": 1}, source="--set")
    with pytest.raises(ConfigError, match="settle_fraction"):
        override(recipe, {"prune.settle_fraction": 1.0}, source="--set")
    with pytest.raises(ConfigError, match="fewer than soft_boundaries"):
        override(recipe, {"prune.soft_steps": 10, "prune.soft_boundaries": 8}, source="--set")
    with pytest.raises(ConfigError, match=r"\[phase3\].*steps >= cycles"):
        override(recipe, {"phase3.steps": 1, "phase3.cycles": 2}, source="--set")


def test_nano_b_cli_rejects_bad_set_and_until(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import sys

    from trainer import cli

    def run(*args: str) -> int:
        monkeypatch.setattr(
            sys, "argv", ["featherface-train", "nano-b", "--config", str(CONFIGS / "nano_b_cpu.toml"), *args]
        )
        with pytest.raises(SystemExit) as info:
            cli.main()
        return int(info.value.code or 0)

    assert run("--set", "phase1.stpes=3", "--out", str(tmp_path / "a")) == 2
    assert "error: --set: unknown key 'phase1.stpes'" in capsys.readouterr().err
    assert run("--until", "phase4", "--out", str(tmp_path / "b")) == 2
    assert "until must be one of phase1, phase2, phase3" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # refused before any work


def test_event_split_is_disjoint_and_holds_out_events() -> None:
    root = need_shared("data/wider-val-dev")
    from trainer.data.wider import read_wider

    samples = read_wider(root)
    train, val = split_wider(samples, (0, 3, 9))
    events = lambda ss: {event_number(Path(s.image).parent.name) for s in ss}  # noqa: E731
    assert events(val) == {0, 3, 9} and not events(train) & {0, 3, 9}
    assert len(train) + len(val) == len(samples) and {s.image for s in train}.isdisjoint(s.image for s in val)
    assert event_number("12--Group") == 12


def test_held_out_images_in_another_source_are_refused(tmp_path: Path) -> None:
    """A copy of a held-out image among the pseudo-label photos (any name) stops the run."""
    import shutil
    from types import SimpleNamespace

    from edge.errors import DatasetError
    from trainer.data.wider import read_wider
    from trainer.pipeline.data import guard_against_leakage

    root = need_shared("data/wider-val-dev")
    _, val = split_wider(read_wider(root), (0, 3, 9))
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(need_shared("data/photos/1.jpg"), photos / "a.jpg")
    clean = SimpleNamespace(label_file="", pseudo_images=str(photos), background_photos="")
    guard_against_leakage(val, clean)  # unrelated photos pass
    shutil.copy(val[0].image, photos / "innocent.jpg")
    with pytest.raises(DatasetError, match=r"data.pseudo_images: .*innocent.jpg is the held-out"):
        guard_against_leakage(val, clean)
    # The whole dev label file lists the held-out events too.
    listed = SimpleNamespace(
        label_file=str(root / "label.txt"), image_root="", pseudo_images="", background_photos=""
    )
    with pytest.raises(DatasetError, match=r"data\.label_file"):
        guard_against_leakage(val, listed)


def test_recalibrate_bn_changes_statistics_not_weights() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    weights = [p.detach().clone() for p in net.parameters()]
    batches = iter([(torch.randn(2, 3, 8, 8) * 5 + 3, [])] * 3)
    recalibrate_bn(net, batches, 3, torch.device("cpu"))
    assert not torch.allclose(net[1].running_var, torch.ones(4))
    assert all(torch.equal(a, b) for a, b in zip(weights, net.parameters(), strict=True))
    assert net[1].momentum == 0.1 and not net.training


def test_pruned_student_file_round_trip(tmp_path: Path) -> None:
    from trainer.prune.groups import model_groups
    from trainer.prune.surgery import analyse, prune_spec, remove_channels

    torch.manual_seed(0)
    model = NanoB().eval()
    example = torch.zeros(1, 3, 64, 64)
    plan = analyse(model, example, model_groups(model))
    rates = {"backbone_early": 0.2, "backbone_late": 0.5, "cbam": 0.3, "bifpn": 0.3, "ssh": 0.3, "heads": 0.2}
    selection = plan.select(model, rates)
    before = sum(p.numel() for p in model.parameters())
    remove_channels(model, selection, example)
    spec = prune_spec(model, selection, example, rates, before)
    path = save_student(tmp_path / "s.pt", model, spec)
    loaded, loaded_spec = load_student(path)
    assert loaded_spec == spec and sum(p.numel() for p in loaded.parameters()) < before
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(model.eval()(x), loaded(x), strict=True))


@pytest.mark.shared
def test_whole_pipeline_tiny(tmp_path: Path) -> None:
    """Distill (stop, resume) -> search (2 trials) -> soft prune with a settle stretch -> removal ->
    fine-tune at 64 px -> ONNX export with metadata; the exported file runs in ONNX Runtime like the
    student does, phase 3 ends with its levels calibrated to the teacher, and a finished run resumes to
    the same files without work."""
    need_shared("weights/featherface_v1_official.pth")
    need_shared("data/wider-train-pool")
    import json

    from edge.model import read_model
    from trainer.pipeline.run import run_nano_b

    recipe = tiny_recipe(tmp_path / "run")
    start = time.perf_counter()
    first = run_nano_b(recipe, until="phase1")
    out = tmp_path / "run"
    assert first["files"]["phase2"] is None and not (out / "phase2").exists()
    summary = run_nano_b(recipe, resume=True)
    assert summary["files"]["phase1"] == first["files"]["phase1"]
    assert summary["phase2"]["params"] < summary["phase2"]["params_before"]
    assert (out / "phase2" / "search" / "best_rates.json").is_file()
    for phase in ("phase1", "phase2", "phase3"):
        assert (out / phase / "metrics.jsonl").is_file() and (out / phase / "loss.png").is_file()
    student, spec = load_student(out / "phase3" / "student.pt")
    assert spec is not None and spec["params_after"] == summary["phase3"]["params"]
    fitted = json.loads((out / "phase3" / "eval.json").read_text())["level_calibration"]
    assert np.asarray(fitted).shape == (3, 2) and np.isfinite(fitted).all()
    # The student file holds the last trained weights with the fitted maps folded in, once.
    from trainer.pipeline.calibrate import calibrate_face_logits

    trained = copy.deepcopy(student)
    saved = torch.load(out / "phase3" / "last.pt", weights_only=False)["model"]  # student + KD weights
    weights = {k.removeprefix("student."): v for k, v in saved.items() if k.startswith("student.")}
    trained.load_state_dict(weights)
    calibrate_face_logits(trained.ClassHead, [tuple(m) for m in fitted])
    for name, value in trained.state_dict().items():
        torch.testing.assert_close(student.state_dict()[name], value, msg=name)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        loc, _conf, _ldm = student(x)
    assert loc.shape == (1, len(prior_boxes(96, 64)), 4)

    import onnxruntime as ort

    onnx_path = Path(summary["files"]["onnx"])
    info = read_model(onnx_path)  # the edge's reader: contract metadata present, parameters counted
    assert info.meta.provenance["phases"][-1] == "teacher-calibration"
    assert info.meta.provenance["level_calibration"] == fitted
    assert 0 < info.parameters < summary["phase2"]["params_before"]
    assert info.meta.parameters == info.parameters
    got = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(
        None, {info.inputs[0].name: x.numpy()}
    )
    np.testing.assert_allclose(got[0], loc.numpy(), rtol=1e-3, atol=1e-3)

    # Every student file the pipeline wrote goes through the trainer's own export (ONNX and OpenVINO,
    # each verified at two sizes before it is kept) and then runs on the edge at two frame sizes.
    from typer.testing import CliRunner

    from edge.detector import load_detector, preprocess
    from trainer.cli import app

    frames = [
        np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8) for w, h in ((96, 64), (130, 90))
    ]
    for phase in ("phase1", "phase2", "phase3"):
        dest = tmp_path / "export" / phase
        args = ["export", str(out / phase / "student.pt"), "--format", "onnx,openvino", "--out", str(dest)]
        result = CliRunner().invoke(app, [*args, "--size", "96x64"])
        assert result.exit_code == 0, (result.output, repr(result.exception))
        ort_det = load_detector(dest / "nano-b.onnx", backend="onnxruntime", threads=1)
        ov_det = load_detector(dest / "nano-b.xml", backend="openvino", threads=1)
        for frame in frames:  # both files, on both runtimes, give the same raw outputs for every anchor
            tensor = preprocess(frame, ort_det.meta).tensor
            a, b = ort_det.backend.infer(tensor), ov_det.backend.infer(tensor)
            assert a.keys() == b.keys()
            for key in a:
                assert a[key].shape[1] == len(prior_boxes(tensor.shape[3], tensor.shape[2]))
                # An untrained tiny net has outputs in the hundreds: compare at 1e-4 of their size.
                np.testing.assert_allclose(a[key], b[key], atol=1e-4 * max(1.0, float(np.abs(a[key]).max())))
            assert isinstance(ort_det.detect(frame), list)

    # Resuming a finished run does no work and returns the same files.
    again = run_nano_b(recipe, resume=True)
    assert again["files"] == summary["files"]

    # Another run fine-tunes the exported file itself (run.start_from): no phase 1 or 2, the network
    # rebuilt from the file scores as the one it was exported from, and the new export says whence.
    from trainer.pipeline.run import with_overrides

    tuned = run_nano_b(
        with_overrides(recipe, run={"out_dir": str(tmp_path / "tuned"), "start_from": str(onnx_path)})
    )
    assert tuned["files"]["phase1"] is None and not (tmp_path / "tuned" / "phase1").exists()
    assert tuned["start"]["val_loss"] == pytest.approx(summary["phase3"]["val_loss"], rel=1e-3)
    # The file carries no KD state: the start's KD weights are settled at 1/L, not left at 1.
    from trainer.models.files import load_kd_state

    settled = load_kd_state(tmp_path / "tuned" / "start" / "student.pt")
    assert settled is not None and float(settled["raw_log_var"].abs().max()) > 1e-3
    provenance = read_model(Path(tuned["files"]["onnx"])).meta.provenance
    assert provenance["phases"] == ["finetune", "teacher-calibration"]
    assert provenance["start_from"]["file"] == onnx_path.name
    assert provenance["start_from"]["phases"] == info.meta.provenance["phases"]
    print(f"tiny pipeline: {time.perf_counter() - start:.1f} s")


@pytest.mark.parametrize("arch", ["nano_b", "nano-b", "v1"])  # nano-b: as the other commands spell it
def test_info_command_prints_table_totals_and_macs(arch: str) -> None:
    from typer.testing import CliRunner

    from trainer.cli import app

    result = CliRunner().invoke(app, ["info", "--arch", arch])
    assert result.exit_code == 0, result.output
    assert (
        "total" in result.output and "MACs at 320x240" in result.output and "MACs at 640x480" in result.output
    )
    if arch == "v1":
        assert "592,371" in result.output


# ------------------------------------------------------------------ label-file split, eval-set guard


def _label_tree(root: Path, names: list[str], heights: tuple[int, ...] = (60, 35, 12, 6)) -> Path:
    """A tiny WIDER_train tree: one 200x160 image per name with faces of the given heights."""
    import cv2

    lines = []
    for i, name in enumerate(names):
        path = root / "WIDER_train" / "images" / "0--Parade" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), np.full((160, 200, 3), 40 + i, np.uint8))
        lines.append(f"# 0--Parade/{name}")
        lines += [f"{10 + 45 * j} 5 {h} {h} " + " ".join(["-1.0"] * 15) for j, h in enumerate(heights)]
    label = root / "label.txt"
    label.write_text("\n".join(lines) + "\n")
    return label


def test_image_split_is_stable_disjoint_and_scored_by_size(tmp_path: Path) -> None:
    from trainer.data.labels import read_label_txt
    from trainer.pipeline.data import size_ground_truth, split_by_image

    names = [f"0_Parade_{i}.jpg" for i in range(12)]
    samples = read_label_txt(_label_tree(tmp_path / "a", names))
    train, val = split_by_image(samples, 3)
    assert len(val) == 3 and len(train) == 9 and {s.image for s in train}.isdisjoint(s.image for s in val)
    # The held-out choice depends on the image, not on the file's order or length.
    shuffled = read_label_txt(_label_tree(tmp_path / "b", [*names[::-1], "0_Parade_new.jpg"]))
    held = {Path(s.image).name for s in val}
    assert held <= {Path(s.image).name for s in split_by_image(shuffled, 4)[1]}
    gt, images_dir = size_ground_truth(val)
    assert images_dir == tmp_path / "a" / "WIDER_train" / "images" and len(gt) == 3
    # Faces of 60 / 35 / 12 / 6 px: easy keeps >= 50, medium >= 30, hard >= 10; the 6-px face is ignored.
    assert (gt.faces("easy"), gt.faces("medium"), gt.faces("hard")) == (3, 6, 9)
    with pytest.raises(Exception, match="leaves no training image"):
        split_by_image(samples, 12)


def test_training_on_an_eval_set_image_is_refused(tmp_path: Path) -> None:
    import shutil

    from edge.errors import DatasetError
    from trainer.pipeline.data import guard_against_eval_sets

    evalset = tmp_path / "eval" / "WIDER_val" / "images" / "1--Handshaking"
    evalset.mkdir(parents=True)
    import cv2

    cv2.imwrite(str(evalset / "1_Handshaking_7.jpg"), np.full((20, 20, 3), 200, np.uint8))
    train = tmp_path / "train"
    train.mkdir()
    cv2.imwrite(str(train / "ok.jpg"), np.full((20, 20, 3), 10, np.uint8))
    sets = [str(tmp_path / "eval"), str(tmp_path / "absent")]  # an absent set is skipped
    guard_against_eval_sets([train / "ok.jpg"], sets)
    shutil.copy(evalset / "1_Handshaking_7.jpg", train / "renamed.jpg")  # a copy under another name
    with pytest.raises(DatasetError, match=r"renamed.jpg is the evaluation image .*1_Handshaking_7.jpg"):
        guard_against_eval_sets([train / "ok.jpg", train / "renamed.jpg"], sets)
    cv2.imwrite(str(train / "1_Handshaking_7.jpg"), np.full((10, 10, 3), 0, np.uint8))  # re-encoded copy
    with pytest.raises(DatasetError, match=r"split\.eval_sets"):
        guard_against_eval_sets([train / "1_Handshaking_7.jpg"], sets)


def test_pipeline_refuses_a_recipe_that_trains_on_wider_val_eval(tmp_path: Path) -> None:
    """The old dev recipe (train on 68 wider-val-dev images) is refused: they are wider-val-eval images."""
    need_shared("data/wider-val-eval")
    root = need_shared("data/wider-val-dev")
    from edge.errors import DatasetError
    from trainer.pipeline.data import build_pipeline_data
    from trainer.pipeline.run import with_overrides

    recipe = with_overrides(
        load_recipe(CONFIGS / "nano_b_cpu.toml"),
        data={"label_file": "", "wider_root": str(root), "num_workers": 0},
        split={"val_events": (0, 3, 9), "eval_sets": (str(root.parent / "wider-val-eval"),)},
    )
    with pytest.raises(DatasetError, match="is the evaluation image"):
        build_pipeline_data(recipe, None)


@pytest.mark.shared
@pytest.mark.parametrize(
    ("feature_weight", "extra_inputs"),
    [(0.0, ()), (0.5, ()), (0.0, ((96, 1), (128, 1, ())))],
    ids=["kd", "feature-kd", "three-inputs"],  # the third: 96-px crops and whole images at 128 px
)
def test_a_killed_phase_resumes_to_the_uninterrupted_weights(
    tmp_path: Path, feature_weight: float, extra_inputs: tuple[tuple, ...]
) -> None:
    """A Nano-B phase killed after a checkpoint and resumed ends bit for bit where an uninterrupted
    one does: same batches (of every input size), schedule, KD weights, soft-pruning hook state,
    feature-KD maps and RNG."""
    need_shared("weights/featherface_v1_official.pth")
    need_shared("data/wider-train-pool")
    import dataclasses

    from trainer.pipeline.run import make_context
    from trainer.pipeline.train import train_steps

    class Killed(Exception):
        pass

    from trainer.pipeline.run import with_overrides

    recipe = with_overrides(
        tiny_recipe(tmp_path / "run"),
        distill={"feature_weight": feature_weight},
        data={"extra_inputs": extra_inputs},
    )
    ctx = make_context(recipe, tmp_path / "run")
    calls: list[int] = []

    def run(out: Path, kill_at: int | None = None, resume: bool = False) -> NanoB:
        torch.manual_seed(0)
        student = NanoB(ctx.recipe.model)

        def hook(step: int) -> dict[str, float]:
            calls.append(step)
            if step == kill_at:
                raise Killed
            with torch.no_grad():  # a soft-pruning-like edit before the step, as phase 2 makes
                next(student.parameters())[0].zero_()
            return {"hooked": float(step)}

        train_steps(dataclasses.replace(ctx, resume=resume), student, 5, 1.0, out, "test", hook)
        return student

    straight = run(tmp_path / "straight").state_dict()
    with pytest.raises(Killed):
        run(tmp_path / "killed", kill_at=3)  # steps 0-2 done and checkpointed (ckpt_every = 1)
    calls.clear()
    resumed = run(tmp_path / "killed", resume=True).state_dict()
    assert calls == [3, 4]  # nothing replayed
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    from trainer.engine.log import read_jsonl

    rows = read_jsonl(tmp_path / "killed" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    # Feature KD is logged only when it is on, and its maps travel in the checkpoint (a resume that
    # dropped them would refit from one batch and end on other weights than the straight run).
    assert all(("kd_feat" in r) == (feature_weight > 0) for r in rows)
    if feature_weight > 0:
        assert all(0.0 < r["kd_feat"] < 10.0 for r in rows)
        saved = torch.load(tmp_path / "killed" / "last.pt", weights_only=False)
        assert int(saved["extra"]["feature_kd"]["updates"]) == 5


def test_a_resumed_run_with_other_settings_says_which_and_keeps_the_old_ones(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import json

    from trainer.pipeline.run import record_config, with_overrides

    recipe = tiny_recipe(tmp_path)
    assert record_config(tmp_path, recipe) == []  # a new run: nothing to compare with
    assert record_config(tmp_path, recipe) == [] and not (tmp_path / "config.previous.json").exists()
    more = with_overrides(recipe, data={"extra_inputs": ((128, 1, ()),)}, phase3={"steps": 99})
    changed = record_config(tmp_path, more)
    assert changed == [
        "data.extra_inputs [] -> [[128, 1, []]]",
        f"phase3.steps {recipe.phase3.steps} -> 99",
    ]
    assert "data.extra_inputs" in caplog.text and "config.previous.json" in caplog.text
    assert (
        json.loads((tmp_path / "config.previous.json").read_text())["phase3"]["steps"] == recipe.phase3.steps
    )
    assert json.loads((tmp_path / "config.json").read_text())["phase3"]["steps"] == 99


def test_level_balanced_class_kd_reaches_the_step_for_every_input_size(tmp_path: Path) -> None:
    """``distill.level_balance`` gives the step per-anchor class-KD weights for the main size and each
    extra input size, and the logged class term is the level-balanced one."""
    from trainer.loss.distill import kd_class_loss, level_weights
    from trainer.pipeline.loop import kd_step, make_losses
    from trainer.pipeline.run import with_overrides

    recipe = with_overrides(
        tiny_recipe(tmp_path), distill={"level_balance": True}, data={"extra_inputs": ((96, 1),)}
    )
    losses = make_losses(recipe, 64, torch.device("cpu"))
    assert sorted(losses.kd_anchor_weight) == [64, 96]
    for dim, w in losses.kd_anchor_weight.items():
        assert len(w) == len(prior_boxes(dim, dim)) and float(w.sum()) == pytest.approx(1.0)
    plain = make_losses(with_overrides(recipe, distill={"level_balance": False}), 64, torch.device("cpu"))
    assert plain.kd_anchor_weight == {}

    torch.manual_seed(0)
    student, teacher = NanoB(recipe.model).eval(), NanoB(recipe.model).eval()
    images = torch.randn(1, 3, 96, 96)
    targets = [torch.tensor([[0.2, 0.2, 0.5, 0.5] + [-1.0] * 10 + [1.0]])]
    balanced = kd_step(teacher, losses)(student, images, targets)["kd_cls"]
    unbalanced = kd_step(teacher, plain)(student, images, targets)["kd_cls"]
    with torch.no_grad():
        s_out, t_out = student.train()(images), teacher(images)
        want = kd_class_loss(s_out[1], t_out[1], 4.0, level_weights([288, 72, 18]))
    assert balanced == pytest.approx(float(want), rel=1e-4) and balanced != pytest.approx(unbalanced)


def test_frozen_bn_step_keeps_the_statistics_and_normalises_with_them(tmp_path: Path) -> None:
    """``phase3.freeze_bn``: the step runs every BatchNorm in eval mode (its running statistics stay,
    and the output is the eval-mode network's) while the step without it updates them."""
    from trainer.pipeline.loop import kd_step, make_losses

    recipe = tiny_recipe(tmp_path)
    losses = make_losses(recipe, 64, torch.device("cpu"))
    torch.manual_seed(0)
    student = NanoB(recipe.model)
    images = torch.randn(2, 3, 64, 64) * 3 + 1  # far from the initial statistics (0, 1)
    targets = [torch.tensor([[0.2, 0.2, 0.5, 0.5] + [-1.0] * 10 + [1.0]])] * 2

    def stats(net: torch.nn.Module) -> list[torch.Tensor]:
        return [b.clone() for n, b in net.named_buffers() if n.endswith(("running_mean", "running_var"))]

    before = stats(student)
    frozen = kd_step(None, losses, freeze_bn=True)(student, images, targets)["loss"]
    assert all(torch.equal(a, b) for a, b in zip(before, stats(student), strict=True))
    with torch.no_grad():
        want = losses.task_for(images)(student.eval()(images), targets).total
    assert float(frozen) == pytest.approx(float(want), rel=1e-5)

    kd_step(None, losses)(student, images, targets)
    assert not all(torch.equal(a, b) for a, b in zip(before, stats(student), strict=True))
