"""The kernels against the per-sample reference path, on the same states and action sequence.

For every task, with a well-trained, a weak and a randomly initialised model,
``wmel_jax.evaluate`` (MJX oracle, flax model, jit/vmap metric kernels) and
``benchmarks.reference.run_reference`` (dm_control one state at a time, the torch
model batch-of-1, plain-Python Kendall tau-b) must agree: M1 and the M2 curve
within 1e-4 relative, M3 within 0.005, an undefined M3 undefined on both sides
with the same count of states used.
"""

from __future__ import annotations

import numpy as np
import pytest

import wmel_jax
from wmel_jax.benchmarks.reference import run_reference
from wmel_jax.converters import tdmpc2_torch as T
from conftest import EVAL_CHUNK, EVAL_K, EVAL_N
from wmel_jax.converters.convert import convert_checkpoint
from wmel_jax import evaluate
from wmel_jax.demo import EXAMPLES_DIR

#: M1 and M2 are means of L2 distances between float32 model outputs and
#: float64 oracle outputs: both sides compute the model in float32 (torch vs
#: XLA, rounding differently at ~1e-7) and the oracle in float64 (dm_control vs MJX).
L2_RTOL = 1e-4
#: M3 is a mean of Kendall tau-b over N states: a near-tie between two actions'
#: predicted scores, ordered differently by the two float32 models (torch
#: batch-of-1 vs XLA over a chunk round differently), moves one state's tau by
#: 2/(A(A-1)/2) and M3 by that over N. Seen at N=24 on acrobot-weak: one
#: state, 0.2/24 = 0.008. Hence N=150 here, as the reference's default.
M3_ATOL = 0.005

TASKS = {"cartpole-swingup": (5, 1), "reacher-easy": (6, 2), "acrobot-swingup": (6, 1)}


def _random_model(task: str, folder) -> tuple[str, str]:
    obs_dim, action_dim = TASKS[task]
    model = T.build_adapter(1, obs_dim, action_dim, seed=7, decoder_hidden=64)
    if action_dim == 1:
        actions = dict(action_levels=[-1.0, -0.5, 0.0, 0.5, 1.0])
    else:
        actions = dict(action_set=[[float(i), float(j)] for i in (-1, 0, 1) for j in (-1, 0, 1)])
    pt = folder / f"{task}-random.pt"
    T.save_adapter(model, pt, meta={"frame_skip": 1}, **actions)
    converted = convert_checkpoint(pt, folder / f"{task}-random.safetensors", env=task)
    return str(pt), str(converted)


def _model(task: str, quality: str, folder) -> tuple[str, str]:
    if quality == "random":
        return _random_model(task, folder)
    stem = EXAMPLES_DIR / f"{task}-{quality}"
    return str(stem.with_suffix(".pt")), str(stem.with_suffix(".safetensors"))


#: Every task's trained models by default; an untrained one (random weights, another decoder width:
#: another architecture, compiled again) on cartpole, the same kernels on the other tasks with -m slow.
_CASES = [pytest.param(task, quality, id=f"{task}-{quality}",
                       marks=[pytest.mark.slow] if quality == "random" and task != "cartpole-swingup" else [])
          for task in sorted(TASKS) for quality in ("good", "weak", "random")]


@pytest.mark.parametrize("task,quality", _CASES)
def test_kernels_match_the_per_sample_reference(task, quality, tmp_path):
    pt, converted = _model(task, quality, tmp_path)
    model = wmel_jax.load(converted)
    problem = evaluate.make_problem(task, model.action_set, n_states=EVAL_N, k_steps=EVAL_K, seed=0)
    targets = evaluate.oracle_targets(problem, EVAL_CHUNK)
    ref = run_reference(pt, task, states=problem.states, action_sequence=problem.action_sequence)
    # The model kernel as compiled for big runs, and as `wmel-jax eval` compiles it
    # for this one model (a small total: backend optimisation level 0).
    assert evaluate.model_compiler_options(EVAL_N), "one model at EVAL_N should take the small-run codegen"
    # And with only the observation-space metrics asked for (`--metrics observation`: another kernel).
    for total, spaces in ((None, None), (EVAL_N, None), (EVAL_N, ("observation",))):
        ours, _ = evaluate.model_metrics(model, problem, targets, EVAL_CHUNK, total_states=total, spaces=spaces)
        what = f"(total_states={total}, spaces={spaces})"
        np.testing.assert_allclose(ours["m1_l2_onestep"], ref["m1_l2_onestep"], rtol=L2_RTOL, err_msg=f"M1 {what}")
        np.testing.assert_allclose(ours["m2_curve"], ref["m2_curve"], rtol=L2_RTOL, err_msg=f"M2 curve {what}")
        np.testing.assert_allclose(ours["m2_l2_kstep"], ref["m2_l2_kstep"], rtol=L2_RTOL, err_msg=f"M2 {what}")
        if ref["m3_action_agreement"] is None:
            assert ours["m3_action_agreement"] is None, f"M3 undefined by the reference but not by the kernels {what}"
        else:
            assert ours["m3_action_agreement"] == pytest.approx(ref["m3_action_agreement"], abs=M3_ATOL), f"M3 {what}"
        assert ours["m3_states_used"] == ref["m3_states_used"], what


def test_an_action_blind_model_has_undefined_m3_on_both_sides(tmp_path):
    """Zero the action's weights in the dynamics: every action predicts the same successor."""
    import torch

    task = "cartpole-swingup"
    model = T.build_adapter(1, 5, 1, seed=3, decoder_hidden=64)
    with torch.no_grad():
        first = model.dynamics[0]
        first.weight[:, -1] = 0.0  # the action is the last input column
    pt = tmp_path / "blind.pt"
    T.save_adapter(model, pt, action_levels=[-1.0, -0.5, 0.0, 0.5, 1.0], meta={"frame_skip": 1})
    flax_model = wmel_jax.load(convert_checkpoint(pt, tmp_path / "blind.safetensors", env=task))
    problem = evaluate.make_problem(task, flax_model.action_set, n_states=EVAL_N, k_steps=EVAL_K, seed=0)
    ours, _ = evaluate.model_metrics(flax_model, problem, evaluate.oracle_targets(problem, EVAL_CHUNK), EVAL_CHUNK)
    ref = run_reference(pt, task, states=problem.states, action_sequence=problem.action_sequence)
    assert ours["m3_action_agreement"] is None and ref["m3_action_agreement"] is None
    assert ours["m3_states_used"] == ref["m3_states_used"] == 0
    np.testing.assert_allclose(ours["m1_l2_onestep"], ref["m1_l2_onestep"], rtol=L2_RTOL)
