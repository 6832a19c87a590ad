"""bench/pipeline.py's summary arithmetic: the isotonic crossing, the per-step learning
measure and the paired statistics the README's Performance numbers come from."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parents[2] / "bench" / "pipeline.py"


@pytest.fixture(scope="module")
def bp():
    spec = importlib.util.spec_from_file_location("bench_pipeline", _PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _rows(evals: dict[int, float], step_s: float = 2.0) -> list[dict]:
    """metrics.jsonl rows with an evaluation at each given step, `step_s` of training wall per step."""
    return [{"step": s, "wall": s * step_s, "heldout_accuracy": a, "eval_seconds": 0.0, "time_eval": 0.0}
            for s, a in sorted(evals.items())]


def test_isotonic_pools_violators(bp):
    assert bp.isotonic([0.3, 0.2, 0.4, 0.35, 0.5]) == pytest.approx([0.25, 0.25, 0.375, 0.375, 0.5])


def test_time_to_target_reads_the_fit_not_one_lucky_evaluation(bp):
    # one spike to 0.40 at step 10 falls back to 0.28: the fit pools it, the crossing comes later
    rows = _rows({0: 0.25, 5: 0.27, 10: 0.40, 15: 0.28, 20: 0.30, 25: 0.36})
    t, before = bp.time_to_target(rows, 0.10, bp.train_wall)
    assert before == 0.25
    fitted = bp.isotonic([0.27, 0.40, 0.28, 0.30, 0.36])
    assert fitted[1] < 0.35  # the spike alone does not cross
    assert 40.0 < t <= 50.0  # between step 20 (40 s) and step 25 (50 s), where the fit reaches 0.35
    assert bp.time_to_target(_rows({0: 0.25, 5: 0.30}), 0.10, bp.train_wall)[0] is None


def test_heldout_mean_steps_needs_the_whole_window(bp):
    evals = {s: 0.2 + 0.01 * (s // 5) for s in range(0, 55, 5)}
    assert bp.heldout_mean_steps(_rows(evals), (5, 50)) == pytest.approx(np.mean([0.2 + 0.01 * k for k in range(1, 11)]))
    short = {s: a for s, a in evals.items() if s <= 45}
    assert bp.heldout_mean_steps(_rows(short), (5, 50)) is None


def test_sign_flip_p_is_exact_for_small_sets(bp):
    assert bp.sign_flip_p(np.array([1.0, 1.0, 1.0])) == pytest.approx(2 / 8)  # all + or all -
    assert bp.sign_flip_p(np.array([1.0, -1.0, 2.0, -2.0])) == pytest.approx(1.0)  # mean 0: every flip is as far
    big = np.full(20, 0.5)  # past EXACT_SIGN_FLIPS: random flips, still about 2 / 2^20
    assert bp.sign_flip_p(big) < 1e-3


def test_paired_stats_geometric_mean_and_interval(bp):
    st = bp.paired_stats([0.5, 2.0, None, 1.0])
    assert st["seeds_used"] == 3 and st["seeds_not_reached"] == 1
    assert st["geomean"] == pytest.approx(1.0)
    assert st["median"] == pytest.approx(1.0)
    lo, hi = st["ci95"]
    assert 0.5 <= lo < 1.0 < hi <= 2.0
    assert bp.paired_stats([None, 1.2]) == {"seeds_used": 1, "seeds_not_reached": 1}


def test_paired_step_stats_is_arm_minus_loop(bp):
    arm = [{"heldout_mean_steps": 0.30}, {"heldout_mean_steps": 0.32}, {"heldout_mean_steps": None}]
    loop = [{"heldout_mean_steps": 0.28}, {"heldout_mean_steps": 0.31}, {"heldout_mean_steps": 0.30}]
    st = bp.paired_step_stats(arm, loop)
    assert st["seeds_used"] == 2
    assert st["per_seed"] == pytest.approx([0.02, 0.01])
    assert st["mean"] == pytest.approx(0.015)
    assert st["p_sign_flip"] == pytest.approx(0.5)
