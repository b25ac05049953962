"""Bayesian rate search: penalty, bounds, a short GP search, two workers on one SQLite study."""

from __future__ import annotations

import json
import time

import optuna
import pytest

from edge.errors import ConfigError
from trainer.prune.groups import GROUP_BOUNDS
from trainer.prune.search import (
    MIN_TRIALS,
    SearchConfig,
    load_best_rates,
    param_penalty,
    run_search,
    sample_rates,
)

# A cheap stand-in for "apply rates, fine-tune, evaluate": a bowl around TARGET, and a parameter count
# that falls linearly with the mean rate (mean 0.4 -> 180K, 0.6 -> 120K).
TARGET = {"backbone_early": 0.3, "backbone_late": 0.5, "cbam": 0.45, "bifpn": 0.5, "ssh": 0.4, "heads": 0.2}


def bowl(rates: dict[str, float]) -> float:
    return sum((rates[g] - TARGET[g]) ** 2 for g in TARGET)


def slow_bowl(rates: dict[str, float]) -> float:
    # Long enough that the spawned second worker joins before the first has done everything.
    time.sleep(0.5)
    return bowl(rates)


def linear_params(rates: dict[str, float]) -> int:
    return int(300_000 * (1.0 - sum(rates.values()) / len(rates)))


def test_penalty_zero_inside_and_growing_outside() -> None:
    assert param_penalty(120_000) == 0.0
    assert param_penalty(150_000) == 0.0
    assert param_penalty(180_000) == 0.0
    above = [param_penalty(p) for p in (181_000, 200_000, 300_000)]
    below = [param_penalty(p) for p in (119_000, 100_000, 50_000)]
    assert 0 < above[0] < above[1] < above[2]
    assert 0 < below[0] < below[1] < below[2]


def test_fewer_than_min_trials_refused() -> None:
    with pytest.raises(ConfigError, match=f">= {MIN_TRIALS}"):
        SearchConfig(n_trials=MIN_TRIALS - 1)
    assert SearchConfig().n_trials == 25
    # Smoke runs say so explicitly; even then a search needs one trial.
    assert SearchConfig(n_trials=2, allow_few_trials=True).n_trials == 2
    with pytest.raises(ConfigError, match=">= 1"):
        SearchConfig(n_trials=0, allow_few_trials=True)


def test_sampled_rates_respect_bounds() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(50):
        trial = study.ask()
        rates = sample_rates(trial, GROUP_BOUNDS)
        assert set(rates) == set(GROUP_BOUNDS)
        for g, r in rates.items():
            lo, hi = GROUP_BOUNDS[g]
            assert lo <= r <= hi, (g, r)
        study.tell(trial, 0.0)


def test_gp_search_finds_good_region(tmp_path) -> None:
    cfg = SearchConfig(n_trials=15, seed=3)
    res = run_search(bowl, linear_params, tmp_path, cfg)
    assert res.n_complete == 15
    study = optuna.load_study(study_name=cfg.study_name, storage=f"sqlite:///{tmp_path / 'study.db'}")
    values = [t.value for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    startup = values[:7]  # the random start-up trials
    # The GP phase must beat the best random start-up point and land near the optimum: the random
    # points mostly pay the parameter penalty (values 1-4), the bowl's floor is 0; over seeds 0-5 the
    # 8 GP trials reached 0.03-0.08.
    assert res.best_value < min(startup)
    assert res.best_value < 0.1
    assert 120_000 <= linear_params(res.best_rates) <= 180_000
    saved = json.loads((tmp_path / "best_rates.json").read_text())
    assert saved["n_complete"] == 15
    assert load_best_rates(tmp_path / "best_rates.json") == res.best_rates
    assert (tmp_path / "search.png").stat().st_size > 1000
    assert len((tmp_path / "trials.csv").read_text().splitlines()) == 16  # header + 15 trials


def test_two_workers_share_one_study(tmp_path) -> None:
    # All start-up (random) trials: this test is about sharing the study, not about the GP.
    cfg = SearchConfig(n_trials=16, seed=5, n_startup_trials=16)
    res = run_search(slow_bowl, linear_params, tmp_path, cfg, workers=2)
    study = optuna.load_study(study_name=cfg.study_name, storage=f"sqlite:///{tmp_path / 'study.db'}")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 16 == res.n_complete
    assert {t.user_attrs["worker"] for t in complete} == {0, 1}  # both really worked
    points = {tuple(sorted(t.params.items())) for t in complete}
    assert len(points) == 16  # no trial ran twice
    # Resuming a finished search runs nothing more.
    run_search(bowl, linear_params, tmp_path, cfg)
    again = optuna.load_study(study_name=cfg.study_name, storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in again.trials) == 16


def _fail_on_fifth(rates: dict[str, float]) -> float:
    if len(_CALLS) == 4:
        raise RuntimeError("simulated crash in the fine-tune")
    _CALLS.append(1)
    return bowl(rates)


_CALLS: list[int] = []


def test_crashed_search_resumes_to_the_requested_count(tmp_path) -> None:
    cfg = SearchConfig(n_trials=15, seed=2, n_startup_trials=15)
    _CALLS.clear()
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_search(_fail_on_fifth, linear_params, tmp_path, cfg)
    res = run_search(bowl, linear_params, tmp_path, cfg)  # a second invocation picks the study up
    study = optuna.load_study(study_name=cfg.study_name, storage=f"sqlite:///{tmp_path / 'study.db'}")
    states = [t.state for t in study.trials]
    assert res.n_complete == 15 == states.count(optuna.trial.TrialState.COMPLETE)
    assert states.count(optuna.trial.TrialState.FAIL) == 1


def _nan_sometimes(rates: dict[str, float]) -> float:
    return float("nan") if rates["heads"] > 0.2 else bowl(rates)


def test_nan_trials_fail_and_are_replaced(tmp_path) -> None:
    cfg = SearchConfig(n_trials=15, seed=1, n_startup_trials=15)
    res = run_search(_nan_sometimes, linear_params, tmp_path, cfg)
    study = optuna.load_study(study_name=cfg.study_name, storage=f"sqlite:///{tmp_path / 'study.db'}")
    states = [t.state for t in study.trials]
    assert res.n_complete == 15 == states.count(optuna.trial.TrialState.COMPLETE)
    assert states.count(optuna.trial.TrialState.FAIL) > 0


def _hang(rates: dict[str, float]) -> float:
    time.sleep(3600)
    return 0.0


def test_killed_worker_trial_is_retried(tmp_path) -> None:
    import multiprocessing

    from trainer.prune.search import _worker_main, open_study

    cfg = SearchConfig(n_trials=15, seed=4, n_startup_trials=15, heartbeat_s=1)
    run_search_dir = str(tmp_path)
    open_study(tmp_path, cfg)
    proc = multiprocessing.get_context("spawn").Process(
        target=_worker_main, args=(_hang, linear_params, run_search_dir, cfg, 1)
    )
    proc.start()
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        study = optuna.load_study(study_name=cfg.study_name, storage=storage)
        # Wait for the rates to be drawn: by then the trial's heartbeat thread has started (a worker
        # killed before its first heartbeat leaves a trial Optuna never recognises as stale).
        if any(t.state == optuna.trial.TrialState.RUNNING and t.params for t in study.trials):
            break
        time.sleep(0.2)
    proc.kill()
    proc.join()
    # Re-read after the kill: the worker may have drawn more rates between the poll and the kill.
    study = optuna.load_study(study_name=cfg.study_name, storage=storage)
    hung = next(t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING)
    # Resumed at once, inside the grace period (2 heartbeats): the search waits for the dead trial to
    # go stale and re-runs it rather than counting it as in flight and ending one trial short.
    res = run_search(bowl, linear_params, tmp_path, cfg)
    study = optuna.load_study(study_name=cfg.study_name, storage=storage)
    assert res.n_complete == 15
    assert study.trials[hung.number].state == optuna.trial.TrialState.FAIL
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == hung.number]
    # The retry re-uses every rate the dead trial had drawn (it may have died before drawing all six).
    assert retried and hung.params and hung.params.items() <= retried[0].params.items()


def test_a_trial_that_never_heartbeats_ends_the_wait(tmp_path, monkeypatch, caplog) -> None:
    """A RUNNING trial with no heartbeat (its worker died before the first one) never goes stale: the
    wait for it is bounded and the search ends with the trials that completed."""
    from trainer.prune import search
    from trainer.prune.search import open_study

    cfg = SearchConfig(n_trials=15, seed=2, n_startup_trials=15, heartbeat_s=1)
    with pytest.warns(UserWarning, match="Heartbeat"):  # ask() outside optimize(): no heartbeat, on purpose
        open_study(tmp_path, cfg).ask()  # RUNNING, and never a heartbeat
    monkeypatch.setattr(search, "_max_wait", lambda cfg: 2.0)
    res = run_search(bowl, linear_params, tmp_path, cfg)
    assert res.n_complete == 14
    assert "14 of 15 trials complete and none finished" in caplog.text and "1 still RUNNING" in caplog.text
