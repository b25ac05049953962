"""Bayesian search of the six per-group pruning rates (the "B" of B-FPGM).

Optuna's GPSampler: a Gaussian-process surrogate (Matern-5/2, ARD) with log expected improvement as the
acquisition (q-batch logEI while other workers' trials are still running). Each trial draws one rate per
group inside its bounds, the caller's ``objective(rates)`` applies them, fine-tunes briefly and returns a
held-out validation loss (or -AP); a penalty is added when the pruned parameter count would leave the
target range. Lower is better.

The study lives in ``sqlite:///<out>/study.db`` (``load_if_exists``), so several worker processes, or
several invocations, share one study, and a killed search resumes where it stopped. A trial whose worker
died is marked failed once its heartbeat is older than the grace period and re-run with the same rates;
a search resumed sooner waits for that rather than counting the dead trial as in flight.
Exactly ``n_trials`` trials complete: a trial that would exceed the count is recorded as pruned with the
user attribute ``surplus`` and its worker stops.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import multiprocessing
import time
import warnings
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from edge.errors import ConfigError
from trainer.prune.groups import GROUP_BOUNDS

log = logging.getLogger(__name__)

MIN_TRIALS = 15
DEFAULT_TRIALS = 25
PARAM_RANGE = (120_000, 180_000)

Objective = Callable[[dict[str, float]], float]
ParamCount = Callable[[dict[str, float]], int]


@dataclass(frozen=True)
class SearchConfig:
    """Options of one search. ``penalty_weight`` is added per range-width outside ``param_range``."""

    n_trials: int = DEFAULT_TRIALS
    bounds: Mapping[str, tuple[float, float]] = field(default_factory=lambda: dict(GROUP_BOUNDS))
    param_range: tuple[int, int] = PARAM_RANGE
    penalty_weight: float = 10.0
    seed: int = 0
    study_name: str = "bfpgm"
    heartbeat_s: int = 60
    n_startup_trials: int | None = None  # random trials before the GP takes over; None: min(10, n/2)
    storage_url: str | None = None  # None: sqlite:///<out>/study.db; a server DB URL for several hosts
    # Smoke runs and tests only: fewer than MIN_TRIALS trials, which are then all random start-up trials.
    allow_few_trials: bool = False

    def __post_init__(self) -> None:
        if self.n_trials < 1:
            raise ConfigError(f"pruning search n_trials={self.n_trials} must be >= 1")
        if self.n_trials < MIN_TRIALS and not self.allow_few_trials:
            raise ConfigError(
                f"pruning search n_trials={self.n_trials} is too few for a GP surrogate; use >= {MIN_TRIALS}"
            )
        lo, hi = self.param_range
        if not 0 < lo < hi:
            raise ConfigError(f"pruning search param_range {self.param_range} must be 0 < low < high")
        for name, (blo, bhi) in self.bounds.items():
            if not 0.0 <= blo <= bhi < 1.0:
                raise ConfigError(f"pruning search bounds for {name!r} must satisfy 0 <= low <= high < 1")


@dataclass(frozen=True)
class SearchResult:
    best_rates: dict[str, float]
    best_value: float
    best_trial: int
    n_complete: int
    files: dict[str, Path]


def param_penalty(params: int, param_range: tuple[int, int] = PARAM_RANGE, weight: float = 10.0) -> float:
    """0 inside ``[low, high]``; outside, ``weight * distance / (high - low)`` (linear, so the GP sees a
    smooth slope back towards the feasible band rather than a cliff)."""
    lo, hi = param_range
    dist = lo - params if params < lo else params - hi if params > hi else 0
    return weight * dist / (hi - lo)


def sample_rates(trial: optuna.Trial, bounds: Mapping[str, tuple[float, float]]) -> dict[str, float]:
    """One rate per group, uniform in its bounds (a fixed group, low == high, is not searched)."""
    return {
        name: (lo if lo == hi else trial.suggest_float(name, lo, hi)) for name, (lo, hi) in bounds.items()
    }


def _storage(out_dir: Path, cfg: SearchConfig) -> RDBStorage:
    url = cfg.storage_url or f"sqlite:///{out_dir / 'study.db'}"
    sqlite = url.startswith("sqlite")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat: stable in use
        storage = RDBStorage(
            url,
            heartbeat_interval=cfg.heartbeat_s,
            grace_period=2 * cfg.heartbeat_s,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
            # Several processes write one SQLite file: wait for the lock instead of failing at once.
            engine_kwargs={"connect_args": {"timeout": 60}} if sqlite else None,
        )
    if sqlite:
        _sqlite_wal(storage)
    return storage


def _sqlite_wal(storage: RDBStorage) -> None:
    """WAL journal + synchronous=NORMAL: readers stop blocking the writer and a commit needs no full
    fsync — about 5x faster per trial here, and still crash-safe for the application (not for a power
    cut mid-commit). WAL needs the workers on one host; across hosts use a server database URL."""
    from sqlalchemy import event

    @event.listens_for(storage.engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    storage.engine.dispose()  # reconnect so the pooled connections get the pragmas


def open_study(out_dir: str | Path, cfg: SearchConfig, worker: int = 0) -> optuna.Study:
    """Create or load the shared study; each worker gets its own sampler seed so that their random
    start-up trials differ."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    storage = _storage(out_dir, cfg)
    seed = cfg.seed + 7919 * worker
    sampler = optuna.samplers.GPSampler(
        seed=seed,
        n_startup_trials=cfg.n_startup_trials or min(10, max(5, cfg.n_trials // 2)),
        independent_sampler=optuna.samplers.RandomSampler(seed=seed),
    )
    return optuna.create_study(
        storage=storage, study_name=cfg.study_name, direction="minimize", sampler=sampler, load_if_exists=True
    )


def _counts(study: optuna.Study) -> tuple[int, int, int]:
    """(complete, running, waiting) trials of the study."""
    states = Counter(t.state for t in study.get_trials(deepcopy=False))
    return states[TrialState.COMPLETE], states[TrialState.RUNNING], states[TrialState.WAITING]


def _fail_stale(study: optuna.Study) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def _max_wait(cfg: SearchConfig) -> float:
    # A worker killed between creating a trial and its first heartbeat leaves a RUNNING trial that never
    # goes stale; when nothing has changed for this long the search ends with what completed instead of
    # hanging.
    return max(600.0, 10.0 * cfg.heartbeat_s)


def run_worker(
    objective: Objective, param_count: ParamCount, out_dir: str | Path, cfg: SearchConfig, worker: int = 0
) -> None:
    """Run trials of the shared study until ``cfg.n_trials`` are complete (waiting for those in flight)."""
    study = open_study(out_dir, cfg, worker)
    _fail_stale(study)

    def wrapped(trial: optuna.Trial) -> float:
        # Trial numbers are unique and increasing across processes: the first n_trials live ones run.
        ahead = [
            t
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
            if t.number <= trial.number
        ]
        if len(ahead) > cfg.n_trials:
            trial.set_user_attr("surplus", True)
            surplus.append(trial.number)
            raise optuna.TrialPruned()
        rates = sample_rates(trial, cfg.bounds)
        params = int(param_count(rates))
        penalty = param_penalty(params, cfg.param_range, cfg.penalty_weight)
        trial.set_user_attr("params", params)
        trial.set_user_attr("penalty", penalty)
        trial.set_user_attr("worker", worker)
        value = float(objective(rates))
        trial.set_user_attr("objective", value)
        # A diverged fine-tune (NaN / inf) fails this trial only; Optuna records it as FAIL and the
        # loop below runs a replacement.
        return value + penalty if math.isfinite(value) else float("nan")

    surplus: list[int] = []
    idle, last = 0.0, (-1, -1)
    while not surplus:
        done, running, waiting = _counts(study)
        if done >= cfg.n_trials:
            return
        if not waiting and done + running >= cfg.n_trials:
            # The rest are in flight: in another worker, or left RUNNING by a killed process (a
            # resumed run starts before their heartbeat is stale). Wait for them to complete or go
            # stale; a stale one is failed and re-queued with its rates, and this worker runs it.
            idle = 0.0 if (done, running) != last else idle
            last = (done, running)
            if idle >= _max_wait(cfg):
                log.warning(
                    "pruning search: %d of %d trials complete and none finished for %.0f s; this "
                    "worker stops (%d still RUNNING: a dead worker's trial that never sent a heartbeat, "
                    "or one still running elsewhere)",
                    done,
                    cfg.n_trials,
                    idle,
                    running,
                )
                return
            pause = min(cfg.heartbeat_s / 2, 5.0)
            time.sleep(pause)
            idle += pause
            _fail_stale(study)
            continue
        failed = sum(t.state == TrialState.FAIL for t in study.get_trials(deepcopy=False))
        if failed >= cfg.n_trials:
            raise RuntimeError(
                f"pruning search: {failed} trials failed (objective NaN, crashed, or worker killed)"
            )
        study.optimize(wrapped, n_trials=1)


def _worker_main(
    objective: Objective, param_count: ParamCount, out_dir: str, cfg: SearchConfig, worker: int
) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    run_worker(objective, param_count, out_dir, cfg, worker)


def run_search(
    objective: Objective,
    param_count: ParamCount,
    out_dir: str | Path,
    cfg: SearchConfig | None = None,
    workers: int = 1,
) -> SearchResult:
    """Run (or resume) the search with ``workers`` processes and write the result files.

    Extra workers are *spawned* processes (safe with CUDA), so with ``workers > 1`` the objective and
    param_count must be picklable: module-level functions or ``functools.partial`` of them.
    Writes ``study.db``, ``best_rates.json``, ``trials.csv`` and ``search.png`` under ``out_dir``.
    """
    cfg = cfg or SearchConfig()
    if workers < 1:
        raise ConfigError(f"pruning search workers must be >= 1, got {workers}")
    out = Path(out_dir)
    open_study(out, cfg)  # create it once, before any worker races to
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_worker_main, args=(objective, param_count, str(out), cfg, i), daemon=False)
        for i in range(1, workers)
    ]
    for p in procs:
        p.start()
    try:
        run_worker(objective, param_count, out, cfg, worker=0)
    finally:
        for p in procs:
            p.join()
    bad = [p.exitcode for p in procs if p.exitcode != 0]
    # A worker killed by a signal (negative exit code) is forgiven when the others re-ran its trials;
    # one that raised (an error in the objective) always fails the search.
    killed = bad and all(code is not None and code < 0 for code in bad)
    if bad and not (killed and _counts(open_study(out, cfg))[0] >= cfg.n_trials):
        raise RuntimeError(f"{len(bad)} pruning search worker(s) failed (exit codes {bad})")
    if bad:
        log.warning("%d pruning search worker(s) killed (exit codes %s); trials re-run", len(bad), bad)
    return summarise(out, cfg)


def summarise(out_dir: str | Path, cfg: SearchConfig) -> SearchResult:
    """Best rates of the study as JSON plus the search plot; raises if no trial completed."""
    out = Path(out_dir)
    study = optuna.load_study(study_name=cfg.study_name, storage=_storage(out, cfg))
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if not complete:
        raise ConfigError(f"pruning search in {out} has no completed trial")
    best = min(complete, key=lambda t: t.value)
    rates = {name: float(best.params.get(name, lo)) for name, (lo, _hi) in cfg.bounds.items()}
    doc: dict[str, Any] = {
        "rates": rates,
        "value": best.value,
        "objective": best.user_attrs.get("objective"),
        "params": best.user_attrs.get("params"),
        "penalty": best.user_attrs.get("penalty"),
        "trial": best.number,
        "n_complete": len(complete),
        "param_range": list(cfg.param_range),
        "sampler": "optuna.samplers.GPSampler (GP + logEI)",
    }
    files = {
        "study": out / "study.db",
        "best_rates": out / "best_rates.json",
        "trials": out / "trials.csv",
        "plot": out / "search.png",
    }
    files["best_rates"].write_text(json.dumps(doc, indent=1) + "\n")
    with files["trials"].open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["trial", "value", "objective", "params", "penalty", "worker", *cfg.bounds])
        for t in sorted(complete, key=lambda t: t.number):
            a = t.user_attrs
            rates_t = [t.params.get(name, lo) for name, (lo, _hi) in cfg.bounds.items()]
            writer.writerow(
                [
                    t.number,
                    t.value,
                    a.get("objective"),
                    a.get("params"),
                    a.get("penalty"),
                    a.get("worker"),
                    *rates_t,
                ]
            )
    plot_search(complete, cfg, files["plot"])
    return SearchResult(rates, float(best.value), best.number, len(complete), files)


def load_best_rates(path: str | Path) -> dict[str, float]:
    """The ``rates`` of a ``best_rates.json`` written by :func:`summarise`."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
        return {str(k): float(v) for k, v in doc["rates"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"cannot read pruning rates from {path}: {exc}") from exc


def plot_search(trials: list[optuna.trial.FrozenTrial], cfg: SearchConfig, path: Path) -> Path:
    """Objective (+ penalty) per trial with the running best, and each group's rate per trial."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trials = sorted(trials, key=lambda t: t.number)
    nums = [t.number for t in trials]
    values = [t.value for t in trials]
    best = [min(values[: i + 1]) for i in range(len(values))]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    ax1.scatter(nums, values, s=18, label="objective + penalty")
    ax1.plot(nums, best, color="C3", label="best so far")
    ax1.set_ylabel("value (lower is better)")
    ax1.legend()
    ax1.set_title(f"B-FPGM rate search ({len(trials)} trials, GP + logEI)")
    for name, (lo, _hi) in cfg.bounds.items():
        ax2.plot(nums, [t.params.get(name, lo) for t in trials], marker=".", label=name)
    ax2.set_xlabel("trial")
    ax2.set_ylabel("pruning rate")
    ax2.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
