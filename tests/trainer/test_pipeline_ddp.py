"""The Nano-B pipeline under DDP: two CPU processes (gloo) run every phase of the tiny recipe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from edge.broker import free_port
from tests.shared_paths import need_shared


def _worker(rank: int, port: int, out: str) -> None:
    import os

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank)
    )
    from tests.tiny_nano_b import tiny_recipe
    from trainer.pipeline import phases
    from trainer.pipeline.run import run_nano_b

    finish = phases._finish

    def record(ctx, final, student, spec, kd_state, **extra):  # type: ignore[no-untyped-def]
        # What this rank trained, before rank 0 alone scores and writes it.
        torch.save(student.state_dict(), Path(out).parent / f"{final.parent.name}-rank{rank}.pt")
        return finish(ctx, final, student, spec, kd_state, **extra)

    phases._finish = record
    summary = run_nano_b(tiny_recipe(Path(out)))  # joins the process group from the environment
    (Path(out).parent / f"summary-rank{rank}.json").write_text(json.dumps(summary, default=str))


@pytest.mark.shared
def test_nano_b_phases_train_in_step_on_two_processes(tmp_path: Path) -> None:
    """Both ranks hold the same network after every phase (gradients averaged, soft pruning and
    channel removal identical on each); rank 0 alone searched, scored and wrote; each step's rows
    are logged once."""
    need_shared("weights/featherface_v1_official.pth")
    need_shared("data/wider-train-pool")
    import torch.multiprocessing as mp

    from trainer.engine.log import read_jsonl

    port = free_port()
    out = tmp_path / "run"
    mp.spawn(_worker, args=(port, str(out)), nprocs=2, join=True)

    for phase in ("phase1", "phase2", "phase3"):
        a = torch.load(tmp_path / f"{phase}-rank0.pt")
        b = torch.load(tmp_path / f"{phase}-rank1.pt")
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), phase
        rows = [r for r in read_jsonl(out / phase / "metrics.jsonl") if r["kind"] == "train"]
        steps = [r["step"] for r in rows]
        assert steps == list(range(1, len(steps) + 1)) and steps, phase  # rank 0's rows only, no repeats
        # Each logged step trained on both ranks' shards: 2 images a rank, 2 ranks.
        assert all(r["images_per_s"] > 0 for r in rows)
    # The phase-2 network is the pruned one, on both ranks.
    pruned = torch.load(tmp_path / "phase2-rank1.pt")
    unpruned = torch.load(tmp_path / "phase1-rank1.pt")
    assert sum(v.numel() for v in pruned.values()) < sum(v.numel() for v in unpruned.values())
    assert len(json.loads((out / "phase2" / "search" / "best_rates.json").read_text())["rates"]) == 6
    main = json.loads((tmp_path / "summary-rank0.json").read_text())
    other = json.loads((tmp_path / "summary-rank1.json").read_text())
    assert Path(main["files"]["onnx"]).is_file() and other["files"]["onnx"] is None  # rank 0 exports
    assert main["phase3"] == other["phase3"]  # both read the eval rank 0 wrote
