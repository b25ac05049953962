"""The tiny Nano-B recipe the pipeline tests run: the CPU recipe's data and teacher at 64 px, a couple
of steps per phase, 2 search trials. Needs ``../shared`` (the pool and the V1 weights)."""

from __future__ import annotations

from pathlib import Path

from trainer.pipeline.recipe import NanoBRecipe, load_recipe

CONFIGS = Path(__file__).resolve().parents[1] / "trainer" / "configs"


def tiny_recipe(out_dir: Path) -> NanoBRecipe:
    from trainer.pipeline.run import with_overrides

    return with_overrides(
        load_recipe(CONFIGS / "nano_b_cpu.toml"),
        run={
            "out_dir": str(out_dir),
            "threads": 1,
            "log_every": 1,
            "ckpt_every": 1,
            "progress": False,
            "bn_recalibration": 1,
            "export_size": (96, 64),
        },
        teacher={"deformable": False},
        data={"synthetic_scenes": 0, "pseudo_images": "", "img_dim": 64, "batch_size": 2, "num_workers": 0},
        split={"val_scale": 96, "val_limit": 2},
        phase1={"steps": 2},
        prune={"trials": 2, "recovery_steps": 1, "soft_steps": 4, "soft_boundaries": 2, "trace_size": 64},
        phase3={"steps": 1},
        calibrate={"images": 2},
    )
