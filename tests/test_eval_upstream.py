"""Upstream TD-MPC2 checkpoints judged as they are: latent metrics and reward ranking.

Parity: on the same states, action set and action sequence, the kernels
(``wmel_jax.evaluate``: MJX oracle with its JAX task rewards, flax model, one
jit pass per chunk) and the per-sample torch path
(``benchmarks.reference.run_reference_latent``: dm_control one state at a
time with its own rewards, the torch mirror batch-of-1, plain-Python tau-b)
agree on the latent one-step error, the latent k-step curve and the
reward-ranking agreement, for single-task models of size 1 and 5 and an mt30
multitask model, in upstream's checkpoint layout, at frame skip 2 (upstream's
action repeat) and 1. Then ``wmel-jax eval`` end to end on them, and what bad
input gets.

Compilation is shared: every problem has the suite's one shape
(conftest.EVAL_*), cartpole at frame skip 2 is compiled once here for every
cartpole model, and acrobot / cartpole at frame skip 1 are the shapes
``test_eval_parity.py`` compiles too.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import wmel_jax
from wmel_jax.benchmarks.reference import (
    dm_control_oracle_with_reward,
    load_adapter,
    reference_latent_metrics,
    reference_reward_rank,
    run_reference_latent,
    upstream_callables,
)
from conftest import EVAL_CHUNK, EVAL_K, EVAL_N, assert_eval_user_error, eval_cli, small_eval_args
from wmel_jax.converters import tdmpc2_torch as T
from wmel_jax.converters.convert import convert_checkpoint
from wmel_jax.converters.tasks import KNOWN_TASK_DIMS, upstream_task_names
from wmel_jax import evaluate
from wmel_jax.demo import EXAMPLES_DIR

#: The latent L2 means compare float32 latents of the same float32 network
#: computed by torch (batch of 1) and XLA (a chunk), of observations from a
#: float64 oracle (dm_control vs MJX, equal to ~1e-12): rounding differences
#: of ~1e-7 relative, as for M1/M2 in test_eval_parity.py.
LATENT_L2_RTOL = 1e-4
#: Reward-ranking agreement is a mean of Kendall tau-b over N states: a near-tie
#: between two actions' predicted rewards, ordered differently by torch and
#: XLA in float32, moves one state's tau by 2/(A(A-1)/2) = 0.2 (A = 5) and the
#: mean by 0.2/N; hence N = 150 (conftest.EVAL_N), as for M3.
RANK_ATOL = 0.005
#: The reward ranking must be defined (neither side constant) on at least this
#: share of the states, or the parity would compare mostly nothing.
MIN_DEFINED_SHARE = 0.9

MT30 = upstream_task_names(30)[0]


def _mt30_action_dims() -> list[int]:
    """Each mt30 task's action width: the real ones for the tasks the oracle knows, a spread for the others."""
    return [KNOWN_TASK_DIMS[name][1] if name in KNOWN_TASK_DIMS else 1 + i % 6 for i, name in enumerate(MT30)]


@pytest.fixture(scope="module")
def upstream(tmp_path_factory, checkpoints):
    """name -> (torch .pt in upstream's layout, converted file, task, frame_skip)."""
    folder = tmp_path_factory.mktemp("upstream")
    built: dict[str, tuple[str, str, str, int]] = {}

    def get(name: str) -> tuple[str, str, str, int]:
        if name in built:
            return built[name]
        if name == "size1":  # cartpole, converted with upstream's default action repeat (2)
            ckpt = checkpoints.upstream(1, obs_dim=5, action_dim=1)
            built[name] = (str(ckpt.pt), str(ckpt.converted), "cartpole-swingup", 2)
        elif name == "size5":  # acrobot, converted with --frame-skip 1
            ckpt = checkpoints.upstream(5, obs_dim=6, action_dim=1)
            dst = convert_checkpoint(ckpt.pt, folder / "size5-fs1.safetensors", env="acrobot-swingup", frame_skip=1)
            built[name] = (str(ckpt.pt), str(dst), "acrobot-swingup", 1)
        elif name == "mt30":  # 30 tasks with mt30's widths (obs 24, action 6), converted without a task
            model = T.build_upstream(1, 24, 6, seed=4, num_tasks=30, action_dims=_mt30_action_dims())
            pt = T.save_upstream(model, folder / "mt30.pt")
            built[name] = (str(pt), str(convert_checkpoint(pt, folder / "mt30.safetensors")), "cartpole-swingup", 2)
        else:
            raise KeyError(name)
        return built[name]

    return get


@pytest.fixture(scope="module")
def problems():
    """(task, frame_skip) -> (Problem, OracleTargets), the suite's shape, the task's default action set."""
    cache: dict[tuple[str, int], tuple] = {}

    def get(task: str, frame_skip: int):
        if (task, frame_skip) not in cache:
            problem = evaluate.make_problem(task, n_states=EVAL_N, k_steps=EVAL_K, seed=0, frame_skip=frame_skip)
            cache[task, frame_skip] = (problem, evaluate.oracle_targets(problem, EVAL_CHUNK))
        return cache[task, frame_skip]

    return get


def _assert_parity(ours: dict, ref: dict, name: str) -> None:
    np.testing.assert_allclose(ours["m1_latent_onestep"], ref["m1_latent_onestep"], rtol=LATENT_L2_RTOL,
                               err_msg=f"{name}: latent one-step")
    np.testing.assert_allclose(ours["m2_latent_curve"], ref["m2_latent_curve"], rtol=LATENT_L2_RTOL,
                               err_msg=f"{name}: latent k-step curve")
    assert ours["m2_latent_kstep"] == ours["m2_latent_curve"][-1]
    if ref["reward_rank_agreement"] is None:
        assert ours["reward_rank_agreement"] is None, f"{name}: reward ranking undefined by the reference only"
    else:
        assert ours["reward_rank_agreement"] == pytest.approx(ref["reward_rank_agreement"], abs=RANK_ATOL), (
            f"{name}: reward-ranking agreement"
        )
    assert ours["reward_rank_states_used"] == ref["reward_rank_states_used"], f"{name}: states used"


# --------------------------------------------------------------------------- #
# Parity with the per-sample torch path
# --------------------------------------------------------------------------- #


# size5 is the same kernel as size1 at wider layers (run with -m slow); mt30 adds the multitask path.
@pytest.mark.parametrize("name", ["size1", pytest.param("size5", marks=pytest.mark.slow), "mt30"])
def test_latent_metrics_match_the_per_sample_torch_path(upstream, problems, name):
    pt, converted, task, frame_skip = upstream(name)
    model = wmel_jax.load(converted)
    problem, targets = problems(task, frame_skip)
    ref = run_reference_latent(pt, task, states=problem.states, action_sequence=problem.action_sequence,
                               actions=problem.actions, frame_skip=frame_skip)
    assert ref["task_index"] == (MT30.index(task) if name == "mt30" else None)
    # As compiled for big runs, and as `wmel-jax eval` compiles it for one model
    # (a small total: backend optimisation level 0).
    small, _ = evaluate.model_metrics(model, problem, targets, EVAL_CHUNK, total_states=EVAL_N)
    _assert_parity(small, ref, f"{name} (small-run codegen)")
    ours, _ = evaluate.model_metrics(model, problem, targets, EVAL_CHUNK)
    _assert_parity(ours, ref, name)
    assert ours["reward_rank_states_used"] >= MIN_DEFINED_SHARE * EVAL_N, (
        f"{name}: reward ranking defined on only {ours['reward_rank_states_used']} of {EVAL_N} states"
    )
    # No decoder: the observation-space metrics are null, and the report says why.
    assert ours["m1_l2_onestep"] is None and ours["m3_states_used"] is None
    assert "no observation decoder" in ours["unavailable"]["m1_l2_onestep"]
    # Each space alone (`--metrics latent`, `--metrics reward`: kernels that skip the other's networks).
    latent, _ = evaluate.model_metrics(model, problem, targets, EVAL_CHUNK, total_states=EVAL_N, spaces=["latent"])
    rank, _ = evaluate.model_metrics(model, problem, targets, EVAL_CHUNK, total_states=EVAL_N, spaces="reward")
    _assert_parity({**latent, **{k: rank[k] for k in ("reward_rank_agreement", "reward_rank_states_used")}},
                   ref, f"{name} (one space at a time)")
    assert latent["reward_rank_agreement"] is None and "not requested" in latent["unavailable"]["reward_rank_agreement"]
    assert rank["m1_latent_onestep"] is None and rank["m2_latent_curve"] is None
    assert "not requested" in rank["unavailable"]["m2_latent_kstep"]


def test_a_reward_blind_model_has_undefined_ranking_on_both_sides(tmp_path, problems):
    """The reward head's output layer zeroed: every action predicts the same reward, tau-b is never defined."""
    import torch

    model = T.build_upstream(1, 5, 1, seed=0)  # the size-1 cartpole architecture: its kernel is compiled
    with torch.no_grad():
        model._reward[-1].weight.zero_()
    pt = T.save_upstream(model, tmp_path / "blind.pt")
    flax_model = wmel_jax.load(convert_checkpoint(pt, tmp_path / "blind.safetensors"))
    problem, targets = problems("cartpole-swingup", 2)
    ours, _ = evaluate.model_metrics(flax_model, problem, targets, EVAL_CHUNK)
    encode, _, reward = upstream_callables(model)
    oracle = dm_control_oracle_with_reward("cartpole-swingup", 2)
    ref = reference_reward_rank([tuple(s) for s in problem.states], [tuple(a) for a in problem.actions], oracle,
                                encode, reward)
    assert ours["reward_rank_agreement"] is None and ref == (None, 0)
    assert ours["reward_rank_states_used"] == 0


def test_adapter_models_get_the_latent_metrics_too(problems):
    """A shipped adapter example (encoder + dynamics + decoder) against the per-sample path with its torch model."""
    task = "cartpole-swingup"
    stem = EXAMPLES_DIR / f"{task}-good"
    model = wmel_jax.load(stem.with_suffix(".safetensors"))
    problem, targets = problems(task, 1)
    ours, _ = evaluate.model_metrics(model, problem, targets, EVAL_CHUNK)
    torch_model, _, _ = load_adapter(stem.with_suffix(".pt"))
    import torch

    @torch.no_grad()
    def encode(obs):
        return tuple(float(x) for x in torch_model.encode(torch.tensor([tuple(obs)], dtype=torch.float32))[0])

    @torch.no_grad()
    def next_latent(z, a):
        z_t = torch.tensor([tuple(z)], dtype=torch.float32)
        return tuple(float(x) for x in torch_model.next(z_t, torch.tensor([tuple(a)], dtype=torch.float32))[0])

    ref = reference_latent_metrics([tuple(s) for s in problem.states], [tuple(a) for a in problem.actions],
                                   [tuple(a) for a in problem.action_sequence],
                                   dm_control_oracle_with_reward(task, 1), encode, next_latent)
    _assert_parity(ours, ref, "adapter")
    assert ours["m1_l2_onestep"] is not None and ours["unavailable"] == {"reward_rank_agreement": "no reward head"}


# --------------------------------------------------------------------------- #
# wmel-jax eval end to end
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("name", ["size1", "size5", "mt30"])
def test_eval_end_to_end(tmp_path, capsys, upstream, problems, name):
    pt, converted, task, frame_skip = upstream(name)
    report = tmp_path / "report.json"
    env = ["--env", task] if name == "mt30" else []  # a multitask model needs its task named
    code, out, err = eval_cli(converted, *env, *small_eval_args("-o", report), capsys=capsys)
    assert code == 0, err
    doc = json.loads(report.read_text())
    assert doc["config"]["env"] == task and doc["config"]["frame_skip"] == frame_skip
    assert doc["metric_spaces"]["m2_latent_kstep"] == "latent"
    (cell,) = doc["cells"]
    # The same numbers as the kernels called directly (the same states: seed 0, the same shape), compiled
    # as the CLI compiles them for one model at this N (a small total: optimisation level 0).
    problem, targets = problems(task, frame_skip)
    direct, _ = evaluate.model_metrics(wmel_jax.load(converted), problem, targets, EVAL_CHUNK, total_states=EVAL_N)
    for key in ("m1_latent_onestep", "m2_latent_kstep", "reward_rank_agreement"):
        assert cell[key] == round(direct[key], 6), key
    assert cell["counts"]["reward_rank_states_used"] == direct["reward_rank_states_used"]
    assert cell["reward_rank_agreement_ci"] == [round(v, 6) for v in direct["reward_rank_agreement_ci"]]
    assert "latent 1-step L2" in out and "reward tau-b" in out


@pytest.mark.slow
def test_eval_size19_end_to_end(tmp_path, capsys, checkpoints):
    ckpt = checkpoints.upstream(19, obs_dim=5, action_dim=1, cache=False)
    report = tmp_path / "report.json"
    code, _, err = eval_cli(ckpt.converted, *small_eval_args("-o", report), capsys=capsys)
    assert code == 0, err
    (cell,) = json.loads(report.read_text())["cells"]
    assert cell["m1_latent_onestep"] > 0 and cell["counts"]["reward_rank_states_used"] > 0


# --------------------------------------------------------------------------- #
# Bad input: one line, exit 2, no partial output
# --------------------------------------------------------------------------- #


def test_multitask_model_without_a_task_name(tmp_path, capsys, upstream):
    _, converted, _, _ = upstream("mt30")
    err = assert_eval_user_error(capsys, tmp_path, converted, "-o", tmp_path / "r.json", *small_eval_args(),
                             match="multitask model (30 tasks) and no task was chosen: pass --env")
    assert "cartpole-swingup" in err  # what the oracle supports


def test_task_the_oracle_does_not_support(tmp_path, capsys, upstream):
    _, converted, _, _ = upstream("mt30")
    err = assert_eval_user_error(capsys, tmp_path, converted, "--env", "walker-walk", "-o", tmp_path / "r.json",
                             *small_eval_args(), match="unknown task 'walker-walk'")
    assert "supports acrobot-swingup, cartpole-swingup, reacher-easy" in err


def test_task_outside_the_models_task_list(tmp_path, capsys, upstream):
    """A multitask file whose task list lacks the task (a custom list, as a converter may record one)."""
    from wmel_jax.model.fileformat import read_model_file, write_model_file

    _, converted, _, _ = upstream("mt30")
    header, _, params = read_model_file(converted)
    header = {k: v for k, v in header.items() if k != "format_version"}
    header["task_names"] = [("cartpole-two-poles" if n == "cartpole-swingup" else n) for n in MT30]
    custom = tmp_path / "custom.safetensors"
    write_model_file(custom, params, header)
    assert_eval_user_error(capsys, tmp_path, custom, "--env", "cartpole-swingup", *small_eval_args(),
                       match="cartpole-swingup is not one of this multitask model's 30 tasks")


@pytest.mark.parametrize("env", ["reacher-easy", "acrobot-swingup"])
def test_upstream_checkpoint_with_a_task_of_the_wrong_widths(tmp_path, capsys, upstream, env):
    _, converted, _, _ = upstream("size1")  # cartpole's widths: obs 5, action 1
    err = assert_eval_user_error(capsys, tmp_path, converted, "--env", env, "-o", tmp_path / "r.json", *small_eval_args(),
                             match=f"model widths (obs_dim=5, action_dim=1) do not fit {env}")
    assert "converted for cartpole-swingup" in err


def test_multitask_model_whose_action_mask_does_not_fit_the_task(tmp_path, capsys):
    """mt30-sized, but task 10 (cartpole-swingup in mt30's order) masked to 5 action dimensions, not 1."""
    model = T.build_upstream(1, 24, 6, seed=5, num_tasks=30)  # action widths spread 1..6 by index
    assert int(model._action_masks[MT30.index("cartpole-swingup")].sum()) == 5
    pt = T.save_upstream(model, tmp_path / "mt.pt")
    converted = convert_checkpoint(pt, tmp_path / "mt.safetensors")
    assert_eval_user_error(capsys, tmp_path, converted, "--env", "cartpole-swingup", *small_eval_args(),
                       match="action mask for cartpole-swingup (task 10) enables action dimensions [0, 1, 2, 3, 4]")


def test_multitask_model_wider_task_than_the_model(tmp_path, capsys):
    model = T.build_upstream(1, 4, 6, seed=6, num_tasks=30, action_dims=_mt30_action_dims())
    converted = convert_checkpoint(T.save_upstream(model, tmp_path / "narrow.pt"), tmp_path / "narrow.safetensors")
    assert_eval_user_error(capsys, tmp_path, converted, "--env", "cartpole-swingup", *small_eval_args(),
                       match="is wider than this multitask model (obs_dim=4")
