"""Config loading, schedule, checkpoints, logs, plots, the training loop (tiny overfit), exact resume,
and the `featherface-train v1` command."""

from __future__ import annotations

import dataclasses
import itertools
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from edge.anchors import prior_boxes
from edge.broker import free_port
from edge.errors import ConfigError, ModelError
from trainer.config import from_dict, load_config, override
from trainer.data.dataset import DataConfig, build_dataset
from trainer.engine.checkpoint import Checkpointer, restore, seed_everything
from trainer.engine.ddp import DistInfo
from trainer.engine.fit import RunConfig, fit
from trainer.engine.log import JsonlLogger, read_jsonl
from trainer.engine.loop import multibox_step
from trainer.engine.optim import OptimConfig, build_optimizer, build_scheduler
from trainer.engine.plots import plot_losses
from trainer.engine.v1 import V1Config, load_v1_config
from trainer.loss import MultiBoxLoss

REPO = Path(__file__).resolve().parents[2]
DIM = 160


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: on a shared, loaded CPU two spinning threads ran these steps 30x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class TinyDetector(nn.Module):
    """Fallback when the V1 registry is absent: three strided levels, 2 anchors a cell."""

    def __init__(self) -> None:
        super().__init__()
        convs = [nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU()]
        self.stem = nn.Sequential(*convs, nn.Conv2d(16, 16, 3, 2, 1))
        self.down = nn.ModuleList([nn.Conv2d(16, 16, 3, 2, 1), nn.Conv2d(16, 16, 3, 2, 1)])
        self.head = nn.Conv2d(16, 2 * 16, 1)

    def forward(self, x: torch.Tensor):
        feats = [torch.relu(self.stem(x))]
        for d in self.down:
            feats.append(torch.relu(d(feats[-1])))
        outs = [self.head(f).permute(0, 2, 3, 1).reshape(x.shape[0], -1, 16) for f in feats]
        y = torch.cat(outs, dim=1)
        return y[..., :4], y[..., 4:6], y[..., 6:16]


def small_model() -> nn.Module:
    from trainer.models import build_model

    return build_model("v1")


def make_images(root: Path, n: int, repeat: int = 1) -> Path:
    """``n`` noisy images with two bright 'faces' each, as a RetinaFace label.txt with landmarks
    (each image listed ``repeat`` times: more steps per epoch on the same images)."""
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        img = rng.integers(0, 80, (DIM, DIM, 3), dtype=np.uint8)
        lines.append(f"# {i}.jpg")
        for x, y, s in ((20 + 5 * i, 30, 40), (100, 90 - 5 * i, 28)):
            cv2.ellipse(img, (x + s // 2, y + s // 2), (s // 2, s * 6 // 10), 0, 0, 360, (180, 200, 230), -1)
            pts = [x + s * 0.3, y + s * 0.4, x + s * 0.7, y + s * 0.4, x + s * 0.5, y + s * 0.55]
            pts += [x + s * 0.35, y + s * 0.75, x + s * 0.65, y + s * 0.75]
            ldm = " ".join(f"{pts[2 * k]:.1f} {pts[2 * k + 1]:.1f} 0.0" for k in range(5))
            lines.append(f"{x} {y} {s} {s} {ldm} 0.9")
        (root / "images").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "images" / f"{i}.jpg"), img)
    (root / "label.txt").write_text(("\n".join(lines) + "\n") * repeat)
    return root / "label.txt"


def train(tmp: Path, label: Path, run: RunConfig, optim: OptimConfig, resume: bool = False, **data):
    data_cfg = DataConfig(label_file=str(label), img_dim=DIM, batch_size=2, num_workers=0, **data)
    seed_everything(run.seed)
    dataset = build_dataset(data_cfg, seed=run.seed)
    model = small_model()
    loss = MultiBoxLoss(torch.from_numpy(prior_boxes(DIM, DIM)))
    result = fit(model, dataset, multibox_step(loss), optim, run, DistInfo(), batch_size=2, resume=resume)
    return model, result


# ---------------------------------------------------------------- config


@dataclass(frozen=True)
class _Inner:
    lr: float = 0.1
    sizes: tuple[int, ...] = (1, 2)


@dataclass(frozen=True)
class _Outer:
    name: str
    inner: _Inner = field(default_factory=_Inner)


def test_config_loader_is_strict_and_names_file_table_key(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('name = "x"\n[inner]\nlr = 1\nsizes = [3, 4, 5]\n')
    cfg = load_config(f, _Outer)
    assert cfg == _Outer("x", _Inner(1.0, (3, 4, 5))) and isinstance(cfg.inner.lr, float)
    f.write_text('name = "x"\n[inner]\nlr = 1\nlrr = 2\n')
    with pytest.raises(ConfigError, match=r"c\.toml: \[inner\] unknown key 'lrr'"):
        load_config(f, _Outer)
    f.write_text('name = "x"\n[inner]\nlr = "fast"\n')
    with pytest.raises(ConfigError, match=r"c\.toml: \[inner\] lr: expected a number"):
        load_config(f, _Outer)
    f.write_text("[inner]\n")
    with pytest.raises(ConfigError, match="missing required key 'name'"):
        load_config(f, _Outer)
    f.write_text("name = \n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(f, _Outer)
    with pytest.raises(ConfigError, match=r"unknown key 'inner\.nope'"):
        override(from_dict(_Outer, {"name": "y"}), {"inner.nope": 1})


def test_v1_toml_loads_and_validates(tmp_path: Path) -> None:
    cfg = load_v1_config(REPO / "trainer/configs/v1.toml", data="x/label.txt", out=tmp_path)
    assert isinstance(cfg, V1Config)
    assert cfg.data.label_file == "x/label.txt" and cfg.run.out_dir == str(tmp_path)
    assert cfg.loss.overlap_threshold == 0.35 and cfg.loss.negpos_ratio == 7
    bad = tmp_path / "bad.toml"
    bad.write_text("[data]\nimg_dim = 100\n")
    with pytest.raises(ConfigError, match=r"\[data\].*multiple of 32"):
        load_config(bad, V1Config)
    bad.write_text("[data]\nextra_inputs = [[640, 2]]\n")  # a Nano-B setting V1 would silently ignore
    with pytest.raises(ConfigError, match="extra_inputs is a Nano-B pipeline setting"):
        load_config(bad, V1Config)


# ---------------------------------------------------------------- optimiser, logs, plots, checkpoints


def test_warmup_then_cosine_and_step_decay() -> None:
    p = nn.Parameter(torch.zeros(1))
    for schedule in ("cosine", "step"):
        cfg = OptimConfig(lr=1.0, warmup_epochs=1, warmup_start=0.0, schedule=schedule, milestones=(0.5,))
        opt = build_optimizer(nn.ParameterList([p]), cfg)
        sched = build_scheduler(opt, cfg, total_steps=100, steps_per_epoch=10)
        lrs = []
        for _ in range(100):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        assert lrs[0] == 0.0 and lrs[5] == pytest.approx(0.5) and lrs[10] == pytest.approx(1.0)
        if schedule == "cosine":
            assert lrs[99] == pytest.approx(0.01, abs=1e-3)
            assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))
        else:
            assert lrs[49] == 1.0 and lrs[50] == pytest.approx(0.1)


def test_warm_restarts_repeat_the_one_cycle_schedule_at_a_scaled_peak() -> None:
    """Cycle 1 of a two-cycle schedule is the one-cycle schedule of half the steps (a finished short
    phase 3 goes on as cycle 1 of the longer recipe); cycle 2 warms up again to restart_scale x peak."""
    cfg = OptimConfig(lr=1.0, warmup_epochs=1, warmup_start=0.0)
    p = nn.Parameter(torch.zeros(1))

    def lrs(total: int, cycles: int) -> list[float]:
        opt = build_optimizer(nn.ParameterList([p]), cfg)
        sched = build_scheduler(opt, cfg, total, steps_per_epoch=10, cycles=cycles, restart_scale=0.5)
        out = []
        for _ in range(total):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    one, two = lrs(100, 1), lrs(200, 2)
    assert two[:100] == pytest.approx(one)
    assert two[100] == 0.0 and two[110] == pytest.approx(0.5) and max(two[100:]) == pytest.approx(0.5)
    assert two[199] == pytest.approx(0.5 * one[99])
    odd = lrs(201, 2)  # cycles of 100 steps; the last takes the remainder and decays over 101
    assert odd[:100] == pytest.approx(two[:100]) and odd[199] > 0.5 * 0.01
    assert odd[199] > odd[200] == pytest.approx(0.5 * 0.01, abs=5e-4)
    with pytest.raises(ValueError, match="cycles"):
        build_scheduler(build_optimizer(nn.ParameterList([p]), cfg), cfg, 10, 10, cycles=0)

    # A finished one-cycle run resumed as a two-cycle one through the checkpoint restore every trainer
    # uses: every later step must run at the fresh two-cycle run's rate, the first included.
    params = nn.ParameterList([p])
    opt = build_optimizer(params, cfg)
    sched = build_scheduler(opt, cfg, 100, steps_per_epoch=10)
    for _ in range(100):
        opt.step()
        sched.step()
    saved = {"model": params.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict()}
    opt = build_optimizer(params, dataclasses.replace(cfg, lr=2.0))  # a changed rate counts
    sched = build_scheduler(opt, dataclasses.replace(cfg, lr=2.0), 200, 10, cycles=2, restart_scale=0.5)
    restore(saved, params, opt, sched, restore_rng=False)
    resumed = []
    for _ in range(100):
        resumed.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert resumed == pytest.approx([2.0 * x for x in two[100:]])


def test_jsonl_and_csv_logs_agree_and_resume_drops_later_rows(tmp_path: Path) -> None:
    log = JsonlLogger(tmp_path)
    for s in range(1, 5):
        log.log({"step": s, "loss": 1.0 / s})
    log.log({"step": 5, "loss": 0.1, "lr": 0.5})  # a new column rewrites the CSV
    csv_lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert csv_lines[0] == "step,loss,lr" and len(csv_lines) == 6
    resumed = JsonlLogger(tmp_path, resume_step=3)
    assert [r["step"] for r in resumed.rows()] == [1, 2, 3]
    assert len((tmp_path / "metrics.csv").read_text().splitlines()) == 4
    rows = [{"kind": "train", "step": s, "loss": 1 / s, "lr": 0.1} for s in range(1, 9)]
    png = plot_losses(rows, tmp_path / "p.png")
    assert png is not None and png.read_bytes()[:4] == b"\x89PNG"


def test_checkpointer_rejects_missing_and_foreign_files(tmp_path: Path) -> None:
    ck = Checkpointer(tmp_path, keep=2)
    with pytest.raises(ModelError, match="no checkpoint"):
        ck.load()
    torch.save({"model": {}}, tmp_path / "last.pt")
    with pytest.raises(ModelError, match="not a featherface training checkpoint"):
        ck.load()
    for step in (1, 2, 3):
        ck.save({"model": {}, "step": step})
    assert sorted(p.name for p in tmp_path.glob("step-*.pt")) == ["step-0000002.pt", "step-0000003.pt"]
    assert ck.load()["step"] == 3 and "rng" in ck.load()


# ---------------------------------------------------------------- training


def test_tiny_overfit_loss_falls_on_two_images(tmp_path: Path) -> None:
    label = make_images(tmp_path / "data", 2, repeat=10)  # 10 steps an epoch on the same two images
    run = RunConfig(
        out_dir=str(tmp_path / "run"), epochs=2, seed=0, device="cpu", log_every=1, progress=False
    )
    optim = OptimConfig(name="adamw", lr=3e-3, weight_decay=0.0, warmup_epochs=0, schedule="constant")
    _, result = train(tmp_path, label, run, optim, crop=False, distort=False, mirror=False)
    rows = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "train"]
    assert result.state.step == 20 and len(rows) == 20
    first, last = rows[0], rows[-1]
    assert last["loss"] < 0.4 * first["loss"], (first, last)
    assert last["landm"] < first["landm"] and last["conf"] < first["conf"]
    assert (tmp_path / "run" / "loss_curves.png").is_file()
    assert (tmp_path / "run" / "metrics.csv").is_file() and result.final_weights.is_file()


def test_resume_reproduces_an_uninterrupted_run(tmp_path: Path) -> None:
    label = make_images(tmp_path / "data", 6)  # 3 steps an epoch: stop mid-epoch, resume across the boundary
    optim = OptimConfig(lr=1e-3, warmup_epochs=1, schedule="cosine")

    def run_cfg(out: str, max_steps: int) -> RunConfig:
        return RunConfig(
            out_dir=str(tmp_path / out),
            epochs=3,
            max_steps=max_steps,
            seed=3,
            device="cpu",
            log_every=1,
            progress=False,
        )

    straight, res = train(tmp_path, label, run_cfg("straight", 4), optim)
    assert res.state.step == 4
    _, first = train(tmp_path, label, run_cfg("resumed", 2), optim)
    assert first.state.step == 2 and first.state.step_in_epoch == 2
    resumed, res2 = train(tmp_path, label, run_cfg("resumed", 4), optim, resume=True)
    assert res2.state.step == 4 and res2.state.epoch == 1

    a, b = straight.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ck_a = torch.load(tmp_path / "straight" / "last.pt", weights_only=False)
    ck_b = torch.load(tmp_path / "resumed" / "last.pt", weights_only=False)
    assert ck_a["scheduler"]["last_epoch"] == ck_b["scheduler"]["last_epoch"] == 4
    for sa, sb in zip(ck_a["optimizer"]["state"].values(), ck_b["optimizer"]["state"].values(), strict=True):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    keys = ("step", "epoch", "loss", "loc", "conf", "landm", "lr")
    rows_a = [{k: r.get(k) for k in keys} for r in read_jsonl(tmp_path / "straight" / "metrics.jsonl")]
    rows_b = [{k: r.get(k) for k in keys} for r in read_jsonl(tmp_path / "resumed" / "metrics.jsonl")]
    assert rows_a == rows_b and [r["step"] for r in rows_b] == [1, 2, 3, 3, 4]  # step 3 ends epoch 0


def test_resume_refuses_another_epoch_length_and_closes_an_unclosed_epoch(tmp_path: Path) -> None:
    """The data position of a resumed run is its step in epochs of a fixed length: a run resumed with
    a different length (batch size or process count) is refused; a checkpoint saved after an epoch's
    last step but before its close gets the epoch closed (mean row logged) before training goes on."""
    label = make_images(tmp_path / "data", 6)  # 3 steps an epoch at batch 2

    def cfg(max_steps: int) -> RunConfig:
        out = str(tmp_path / "r")
        return RunConfig(out_dir=out, epochs=2, max_steps=max_steps, device="cpu", progress=False)

    train(tmp_path, label, cfg(2), OptimConfig())
    ckpt = Checkpointer(tmp_path / "r")
    state = ckpt.load()
    assert state["steps_per_epoch"] == 3
    ckpt.save({**state, "steps_per_epoch": 2})  # as if saved by a run with 2 steps an epoch
    with pytest.raises(ConfigError, match="saved at 2 steps an epoch, this run has 3"):
        train(tmp_path, label, cfg(4), OptimConfig(), resume=True)
    # Step 3 done, epoch 0 not yet closed (what a save between the two used to leave).
    ckpt.save({**state, "step": 3, "step_in_epoch": 3, "epoch_sums": {"loss": 3.0}, "steps_per_epoch": 3})
    _, res = train(tmp_path, label, cfg(4), OptimConfig(), resume=True)
    assert res.state.step == 4 and res.state.epoch == 1 and res.state.step_in_epoch == 1
    epochs = [r for r in read_jsonl(tmp_path / "r" / "metrics.jsonl") if r["kind"] == "epoch"]
    assert [(r["epoch"], r["step"], r["loss"]) for r in epochs] == [(0, 3, 1.0)]


# ---------------------------------------------------------------- CLI


def _cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    from trainer.cli import main

    monkeypatch.setattr(sys, "argv", ["featherface-train", *args])
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_v1_trains_resumes_and_reports_bad_config(tmp_path: Path, monkeypatch, capsys, caplog) -> None:
    label = make_images(tmp_path / "data", 2)
    cfg = tmp_path / "v1.toml"
    text = (REPO / "trainer/configs/v1.toml").read_text()
    imagenet = 'backbone_weights = "../shared/weights/mobilenetv1_0.25_imagenet.tar"'
    text = text.replace(imagenet, 'backbone_weights = ""')
    text = text.replace("img_dim = 640", f"img_dim = {DIM}").replace("batch_size = 32", "batch_size = 2")
    text = text.replace("num_workers = 4", "num_workers = 0").replace('device = "auto"', 'device = "cpu"')
    text = text.replace("progress = true", "progress = false").replace("log_every = 20", "log_every = 1")
    cfg.write_text(text.replace("epochs = 250", "epochs = 1"))
    out = tmp_path / "run"
    args = ("v1", "--config", str(cfg), "--data", str(label), "--out", str(out))
    code, stdout, _ = _cli(monkeypatch, capsys, *args)
    assert code == 0 and "trained 1 steps" in stdout
    cfg.write_text(text.replace("epochs = 250", "epochs = 2"))
    code, stdout, _ = _cli(
        monkeypatch, capsys, "v1", "--config", str(cfg), "--data", str(label), "--out", str(out), "--resume"
    )
    assert code == 0 and "trained 2 steps" in stdout
    assert "resuming with a changed config: run.epochs" in caplog.text
    code, _, err = _cli(monkeypatch, capsys, *args)  # a fresh run must not overwrite this one
    assert code == 2 and "already holds a training run" in err
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl") if r["kind"] == "train"] == [1, 2]
    ck = torch.load(out / "last.pt", weights_only=False)
    assert ck["config"]["data"]["label_file"] == str(label) and ck["epoch"] == 2

    cfg.write_text(text.replace("[optim]", "[optim]\nlearning_rate = 1"))
    code, _, err = _cli(monkeypatch, capsys, "v1", "--config", str(cfg))
    assert code == 2 and err.count("\n") == 1 and "[optim] unknown key 'learning_rate'" in err
    code, _, err = _cli(monkeypatch, capsys, "v1", "--config", str(cfg.with_name("absent.toml")))
    assert code == 2 and "config file not found" in err
    cfg.write_text(text)
    code, _, err = _cli(
        monkeypatch,
        capsys,
        "v1",
        "--config",
        str(cfg),
        "--data",
        str(tmp_path / "none.txt"),
        "--out",
        str(tmp_path / "r2"),
    )
    assert code == 2 and "none.txt" in err and err.count("\n") == 1


def _ddp_worker(rank: int, port: int, tmp: str, label: str) -> None:
    import os

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    from trainer.engine.ddp import cleanup, init_distributed

    info = init_distributed("cpu")
    try:
        seed_everything(0)
        data_cfg = DataConfig(label_file=label, img_dim=DIM, batch_size=2, num_workers=0)
        dataset = build_dataset(data_cfg, seed=0)
        model = TinyDetector()
        loss = MultiBoxLoss(torch.from_numpy(prior_boxes(DIM, DIM)))
        run = RunConfig(out_dir=tmp, epochs=1, seed=0, device="cpu", log_every=1, progress=False)
        fit(model, dataset, multibox_step(loss), OptimConfig(), run, info, batch_size=2)
        torch.save(model.state_dict(), Path(tmp) / f"rank{rank}.pt")
    finally:
        cleanup(info)


@pytest.mark.slow
def test_ddp_two_cpu_processes_stay_in_sync_and_only_rank0_writes(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    label = make_images(tmp_path / "data", 8)  # 8 images, 2 ranks x batch 2 -> 2 steps
    port = free_port()
    out = tmp_path / "run"
    mp.spawn(_ddp_worker, args=(port, str(out), str(label)), nprocs=2, join=True)
    a, b = torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)  # gradients were averaged across ranks
    rows = [r for r in read_jsonl(out / "metrics.jsonl") if r["kind"] == "train"]
    assert [r["step"] for r in rows] == [1, 2]  # one log, from rank 0, 2 steps of the sharded epoch
    assert Checkpointer(out).load()["step"] == 2


def test_aux_parameters_are_trained_saved_and_restored(tmp_path: Path) -> None:
    label = make_images(tmp_path / "data", 4)
    seed_everything(0)
    dataset = build_dataset(DataConfig(label_file=str(label), img_dim=DIM, batch_size=2, num_workers=0))
    loss = MultiBoxLoss(torch.from_numpy(prior_boxes(DIM, DIM)))
    aux = nn.ParameterDict({"log_var": nn.Parameter(torch.zeros(()))})

    def step(model, images, targets):  # uncertainty-weighted loss: the weight is learned
        parts = loss(model(images), targets)
        s = aux["log_var"]
        return {"loss": torch.exp(-s) * parts.total + s, "log_var": s.detach()}

    run = RunConfig(out_dir=str(tmp_path / "r"), epochs=1, device="cpu", progress=False, log_every=1)
    fit(TinyDetector(), dataset, step, OptimConfig(lr=0.01), run, DistInfo(), batch_size=2, aux=aux)
    trained = aux["log_var"].item()
    assert trained > 0  # a large task loss pushes the log-variance up
    saved = Checkpointer(tmp_path / "r").load()
    assert float(saved["aux"]["log_var"]) == trained
    fresh = nn.ParameterDict({"log_var": nn.Parameter(torch.zeros(()))})
    run2 = RunConfig(out_dir=str(tmp_path / "r"), epochs=1, device="cpu", progress=False)
    opt = OptimConfig(lr=0.01)
    fit(TinyDetector(), dataset, step, opt, run2, DistInfo(), batch_size=2, aux=fresh, resume=True)
    assert fresh["log_var"].item() == trained  # restored (the run was already complete: no more steps)


# ---------------------------------------------------------------- the shared optimiser step


def _linear_step(scale: float):
    def step(model: nn.Module, images: torch.Tensor, targets) -> dict[str, torch.Tensor | float]:
        loss = scale * model(images).sum()
        return {"loss": loss, "note": 1.5}

    return step


def test_optimizer_step_clips_guards_and_reports_floats() -> None:
    """The one step V1 and every Nano-B phase take: clipping from the config, the NaN guard."""
    from trainer.engine.loop import DivergedError, optimizer_step

    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    batch = (torch.ones(2, 4), [torch.zeros(1)])
    before = model.weight.detach().clone()
    logs = optimizer_step(
        model, batch, _linear_step(1e6), opt, sched, scaler, device=torch.device("cpu"), grad_clip=1.0
    )
    assert logs["note"] == 1.5 and isinstance(logs["loss"], float)
    # A gradient of norm ~3e6 moved the weights by at most the clipped norm times the rate.
    assert float((model.weight.detach() - before).norm()) <= 1.0 + 1e-5
    with pytest.raises(DivergedError, match="at phase x step 7"):
        optimizer_step(
            model,
            batch,
            _linear_step(float("nan")),
            opt,
            sched,
            scaler,
            device=torch.device("cpu"),
            where="phase x step 7",
        )


def _nan_worker(rank: int, port: int, tmp: str) -> None:
    import os

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    from trainer.engine.ddp import cleanup, init_distributed, wrap_model
    from trainer.engine.loop import DivergedError, optimizer_step

    info = init_distributed("cpu")
    try:
        model = wrap_model(nn.Linear(2, 1), info)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
        scaler = torch.amp.GradScaler("cuda", enabled=False)

        def step(m, images, targets):  # rank 1's loss diverges, rank 0's is fine
            out = m(images).sum()
            return {"loss": out * float("nan") if rank == 1 else out}

        batch = (torch.ones(4, 2), [torch.zeros(1)])
        try:
            optimizer_step(model, batch, step, opt, sched, scaler, device=info.device, info=info, where="s")
        except DivergedError as exc:
            (Path(tmp) / f"rank{rank}.txt").write_text(str(exc))
    finally:
        cleanup(info)


def test_a_loss_that_diverges_on_one_rank_stops_every_rank(tmp_path: Path) -> None:
    """Under DDP the NaN guard is collective: the rank with a finite loss stops too, instead of waiting
    forever in backward's all-reduce for the rank that stopped."""
    import torch.multiprocessing as mp

    port = free_port()
    ctx = mp.spawn(_nan_worker, args=(port, str(tmp_path)), nprocs=2, join=False)
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("a rank hung after another rank's loss diverged")
    assert "loss is nan" in (tmp_path / "rank1.txt").read_text()
    assert "not finite on another rank" in (tmp_path / "rank0.txt").read_text()
