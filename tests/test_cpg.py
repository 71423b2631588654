"""``wmel-jax cpg`` end to end: the episode kernel, the arms, the JSON, the CLI and what bad input gets.

The planners' per-call parity is in tests/test_planning_parity.py; the
statistics in tests/test_cpg_stats.py; agreement in distribution with the
per-call reference planner (hundreds of episodes) in tests/test_cpg_distribution.py
(slow). The suite's time budget keeps one of each kind by default: the replay
against the reference's loop, the report's layout, the CLI round trip into
eval --downstream, one arm, bad input, one toy chunking check; the others
(CEM and env-reading toy kernels, start states, eval --cpg, several models,
the on-disk oracle arm, a skipped model) are marked slow: run them with -m slow. Every run here shares a few small shapes (3 episodes, 2 in flight:
the third takes a freed slot), so each arm's kernel compiles once per
session (at XLA's fast-compile level: these batches are small).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import wmel_jax
from wmel_jax.benchmarks import reference as R
from wmel_jax.benchmarks import reference_planner as RP
from wmel_jax.demo import EXAMPLES_DIR
from wmel_jax.planning import cpg as C
from wmel_jax.planning import episodes as EP

from conftest import small_eval_args, without_progress

TASK = "cartpole-swingup"
GOOD, WEAK = (str(EXAMPLES_DIR / f"{TASK}-{q}.safetensors") for q in ("good", "weak"))
#: The suite's CPG shape: episodes, episodes in flight, horizon.
N, CHUNK, HORIZON = 3, 2, 40
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def cpg_cli(*argv, capsys) -> tuple[int, str, str]:
    from wmel_jax import cli

    code = cli.main(["cpg", *map(str, argv), "--no-cache"])
    out = capsys.readouterr()
    return code, out.out, out.err


def small(*extra) -> list[str]:
    return ["--episodes", str(N), "--chunk-episodes", str(CHUNK), "--horizon", str(HORIZON), *map(str, extra)]


@pytest.fixture(scope="module")
def both_arms():
    """The suite's shape, both arms, the good cartpole example (the API)."""
    return C.run_cpg(C.CPGOptions([GOOD], episodes=N, chunk_episodes=CHUNK, horizon=HORIZON))[0]


# --------------------------------------------------------------------------- #
# the episode kernel
# --------------------------------------------------------------------------- #


def test_oracle_arm_replays_the_reference_loop_with_the_same_candidates(both_arms):
    """Episode by episode, the kernel's oracle arm is the reference's loop (dm_control, per-call planner).

    Given the kernel's own start states and, per plan call, the candidates the
    kernel draws (keys folded from (seed, episode, call)), the reference's
    episode loop takes the same number of plan calls and steps to the same outcome.
    """
    oracle = wmel_jax.make_oracle(TASK)
    start = EP.start_states(oracle, 0, N)
    score = R.task_score(TASK)
    planner = RP.RandomShooting(RP.oracle_dynamics(TASK), score, R.default_actions(TASK))
    results = both_arms["oracle_full"]["results"]
    for k in range(N):
        def candidates(call, k=k):
            return np.asarray(jax.random.randint(EP.plan_key(EP.seed_words(0), k, call), (50, 15), 0, 5, jnp.int32))

        ref = RP.run_episode(TASK, RP.env_at(TASK, start[k]), start[k], planner, horizon=HORIZON, candidates=candidates)
        got = results[k]
        assert (got["success"], got["steps"], got["plan_calls"]) == (ref["success"], ref["steps"], ref["plan_calls"]), k


@pytest.mark.slow  # torch batch-of-1 for every candidate step (~40 s)
def test_learned_arm_replays_the_reference_loop_with_the_same_candidates(both_arms):
    """The learned arm likewise: the torch checkpoint per call (batch-of-1) plans, dm_control executes."""
    import torch

    oracle = wmel_jax.make_oracle(TASK)
    start = EP.start_states(oracle, 0, N)
    step, actions, _ = RP.model_dynamics(GOOD.replace(".safetensors", ".pt"))
    planner = RP.RandomShooting(step, R.task_score(TASK), actions)
    results = both_arms["learned_full"]["results"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for k in range(N):
            def candidates(call, k=k):
                return np.asarray(jax.random.randint(EP.plan_key(EP.seed_words(0), k, call), (50, 15), 0, 5,
                                                     jnp.int32))

            ref = RP.run_episode(TASK, RP.env_at(TASK, start[k]), start[k], planner, horizon=HORIZON,
                                 candidates=candidates)
            got = results[k]
            assert (got["success"], got["steps"], got["plan_calls"]) == \
                (ref["success"], ref["steps"], ref["plan_calls"]), k
    finally:
        torch.set_num_threads(threads)


DREAMER = str(EXAMPLES_DIR / f"{TASK}-dreamerv3.safetensors")
#: The DreamerV3 run's horizon (its episodes are replayed per call on the host: kept short).
DREAMER_HORIZON = 20


@pytest.fixture(scope="module")
def dreamer_cli(tmp_path_factory):
    """``wmel-jax cpg -q`` on the shipped DreamerV3 example (the suite's episodes, both arms): its JSON, the
    XLA options its learned arm's kernel was compiled with, and what it printed (stdout, stderr)."""
    import contextlib
    import io

    from wmel_jax import cli, kernel_cache

    out = tmp_path_factory.mktemp("dreamer-cpg") / "dreamer.cpg.json"
    options: list[dict] = []  # of each episode kernel with params (the learned arm's)
    build = kernel_cache.compiled

    def recording(kernel, args, compiler_options=None, *rest, **kw):
        if "episode_kernel" in getattr(kernel, "__qualname__", "") and args[0] is not None:
            options.append(dict(compiler_options or {}))
        return build(kernel, args, compiler_options, *rest, **kw)

    stdout, stderr = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        mp.setattr(kernel_cache, "compiled", recording)
        code = cli.main(["cpg", DREAMER, "--episodes", str(N), "--chunk-episodes", str(CHUNK), "--horizon",
                         str(DREAMER_HORIZON), "-o", str(out), "--no-cache", "-q"])
    assert code == 0, stderr.getvalue()
    return out, json.loads(out.read_text()), options, (stdout.getvalue(), stderr.getvalue())


def test_quiet_prints_the_table_alone(dreamer_cli):
    """``-q``: no progress on stderr; stdout is the table and the file written."""
    out, doc, _, (stdout, stderr) = dreamer_cli
    assert stderr == ""
    assert stdout == C.format_cpg_table(doc) + f"wrote CPG JSON: {out}\n"


class _BatchedProjection(RP.RandomShooting):
    """The reference's random shooting with a DreamerV3 model's own projection (``predict``), every candidate
    rolled in one batch per step (each candidate's value and cut still the reference's ``value_and_cut``)."""

    def __init__(self, model, actions: np.ndarray):
        super().__init__(None, R.task_score(TASK), actions.tolist())
        self.model, self.table = model, actions

    def plan(self, obs, steps_left, candidates=None):
        h = min(self.horizon, steps_left)
        seqs = np.asarray(candidates)[:, :h]
        states, rolled = np.repeat(np.asarray([obs], np.float32), len(seqs), 0), []
        for t in range(h):
            states = np.asarray(self.model.predict(states, self.table[seqs[:, t]]))
            rolled.append(states)
        best, prefix = np.inf, []
        for j, seq in enumerate(seqs):
            path = iter([tuple(float(x) for x in rolled[t][j]) for t in range(h)])
            value, cut = RP.value_and_cut(lambda _s, _a, path=path: next(path), self.score, obs, list(seq))
            if value < best:
                best, prefix = value, [self.actions[i] for i in seq[:cut]]
        return prefix, {}


def _replay(planner_step, actions, results, horizon: int) -> None:
    """Each episode of ``results`` against the reference's per-call loop: ``planner_step`` plans (batch of 1;
    or a planner), dm_control executes, the candidates are the kernel's draws (keys folded from (seed, episode,
    call))."""
    oracle = wmel_jax.make_oracle(TASK)
    start = EP.start_states(oracle, 0, N)
    planner = planner_step if isinstance(planner_step, RP.RandomShooting) else \
        RP.RandomShooting(planner_step, R.task_score(TASK), actions)
    for k in range(N):
        def candidates(call, k=k):
            return np.asarray(jax.random.randint(EP.plan_key(EP.seed_words(0), k, call), (50, 15), 0, len(actions),
                                                 jnp.int32))

        ref = RP.run_episode(TASK, RP.env_at(TASK, start[k]), start[k], planner, horizon=horizon,
                             candidates=candidates)
        got = results[k]
        assert (got["success"], got["steps"], got["plan_calls"]) == (ref["success"], ref["steps"], ref["plan_calls"]), k


def test_a_dreamer_plans_through_its_projection_compiled_with_its_familys_options(dreamer_cli, capsys, checkpoints):
    """DreamerV3's learned arm: its plans are the Markovian projection's, compiled with the family's XLA options.

    Episode by episode, the reference's per-call loop planning with the
    loaded model's own projection (``DreamerV3Model.predict``, jitted with the
    family's options; the candidates of a call in one batch) reaches the kernel's outcome, plan calls
    and steps; the learned arm's kernel took those options (without them XLA's
    CPU matmul fusion rounds float32 products 3x worse, flipping near-ties in
    the categorical latents); the file feeds eval --downstream unchanged.
    """
    from wmel_jax import cli
    from wmel_jax.model import dreamerv3 as D

    out, doc, options, _ = dreamer_cli
    family = D.xla_options()
    assert options and all(family.items() <= o.items() for o in options), options
    model = wmel_jax.load(DREAMER)
    actions = [tuple(a) for a in R.default_actions(TASK)]
    _replay(_BatchedProjection(model, np.asarray(actions, np.float32)), actions, doc["learned_full"]["results"],
            DREAMER_HORIZON)
    assert doc["model"]["schema"] == model.schema and doc["cpg"]["gap"] is not None
    # The file feeds eval's downstream pairing unchanged (the suite's eval model: its kernels are shared).
    report = out.parent / "eval.json"
    model_file = checkpoints.adapter(1, obs_dim=5, action_dim=1, seed=0).converted
    code = cli.main(["eval", str(model_file), *small_eval_args("--downstream", out, "-o", report), "--no-cache", "-q"])
    capsys.readouterr()
    assert code == 0
    cell = json.loads(report.read_text())["cells"][0]
    assert cell["gap"] == doc["cpg"]["gap"] and cell["verdict"] == doc["cpg"]["verdict"]


@pytest.mark.slow  # torch batch-of-1 per candidate step of a recurrent model (~1 min)
def test_a_dreamers_learned_arm_replays_the_torch_mirrors_per_call_loop(dreamer_cli):
    """The same episodes planned by the torch mirror of NM512's world model (upstream's code path)."""
    import torch

    _, doc, _, _ = dreamer_cli
    step = R.dreamer_callables(R.load_dreamer(DREAMER.replace(".safetensors", ".pt")))["model_step"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _replay(step, [tuple(a) for a in R.default_actions(TASK)], doc["learned_full"]["results"], DREAMER_HORIZON)
    finally:
        torch.set_num_threads(threads)


class ToyEnv:
    """The grid world of tests/test_planning.py as an env: success on reaching x0 = 3 (reward 1)."""

    frame_skip = 1

    def step_reward(self, obs, action):
        nxt = jnp.stack([obs[:, 0] + action[:, 0], obs[:, 1] - 0.5 * action[:, 0]], axis=1)
        return nxt, (jnp.abs(nxt[:, 0] - 3.0) < 0.5).astype(obs.dtype)


TOY_ACTIONS = np.array([[-1.0], [0.0], [1.0]])
TOY_FAST = {"xla_cpu_use_fusion_emitters": False, "xla_backend_optimization_level": 0} \
    if jax.default_backend() == "cpu" else {}


def _toy_kernel(kind: str, block: int = 0, halving: bool = False):
    env = ToyEnv()

    def drifting(params, task):  # a "learned" model that drifts: it plans worse than the env behaves
        return lambda obs, a: env.step_reward(obs, a)[0] + jnp.array([0.3, 0.0])

    def score(obs):
        return jnp.abs(obs[:, 0] - 3.0) + 0.25 * jnp.abs(obs[:, 1])

    config = C.PlannerConfig(kind, horizon=4, candidates=3, iterations=2, samples=3, elites=1)
    return EP.episode_kernel(env, drifting, score, config, 0.5, rounds_per_call=3, block=block, halving=halving), config


def _toy_host_loop(kind: str, start: np.ndarray, seed: int, horizon: int) -> list[tuple[bool, int, int]]:
    """The same episodes one at a time, one plan call per Python iteration (keys as the kernel folds them)."""
    from wmel_jax.planning import planners as P

    kernel, config = _toy_kernel(kind)
    env = ToyEnv()
    step = lambda obs, a: env.step_reward(obs, a)[0] + jnp.array([0.3, 0.0])  # noqa: E731
    score = lambda obs: jnp.abs(obs[:, 0] - 3.0) + 0.25 * jnp.abs(obs[:, 1])  # noqa: E731
    planner = jax.jit(lambda key, obs, left: P.plan(key[None], step, score, obs[None], left[None],
                                                    jnp.asarray(TOY_ACTIONS), config), compiler_options=TOY_FAST)
    env_step = jax.jit(lambda obs, a: env.step_reward(obs[None], a[None]), compiler_options=TOY_FAST)
    out = []
    for k, obs in enumerate(start):
        obs, steps, calls, success = jnp.asarray(obs), 0, 0, False
        while steps < horizon and not success:
            chosen = planner(EP.plan_key(EP.seed_words(seed), k, calls), obs, jnp.asarray(horizon - steps))
            calls += 1
            if int(chosen.length[0]) == 0:
                break
            for t in range(int(chosen.length[0])):
                nxt, reward = env_step(obs, jnp.asarray(TOY_ACTIONS)[chosen.actions[0, t]])
                obs, steps = nxt[0], steps + 1
                if float(reward[0]) >= 0.5:
                    success = True
                    break
        out.append((success, steps, calls))
    return out


@pytest.mark.parametrize("kind", ["random-shooting", pytest.param("cem", marks=pytest.mark.slow)])
def test_results_do_not_depend_on_how_many_episodes_are_in_flight(kind):
    """Any number of slots, any rounds per call: the episodes of a seed are the host loop's, one by one."""
    kernel, _ = _toy_kernel(kind)
    start = np.random.default_rng(0).integers(-6, 7, (7, 2)).astype(np.float64)
    want = _toy_host_loop(kind, start, seed=4, horizon=9)
    assert {w[0] for w in want} == {True, False}  # some episodes succeed, some run out of steps
    for chunk in (1, 3, 7):
        r = EP.run_arm(kernel, None, None, start, 4, TOY_ACTIONS, 9, chunk, dtype=np.float64,
                       compiler_options=TOY_FAST)
        assert list(zip(r.success.tolist(), r.steps.tolist(), r.plan_calls.tolist())) == want, chunk
        assert r.slot_rounds == int(r.plan_calls.sum()) and r.slot_rounds <= r.planned <= r.rounds * r.chunk
    # Planned in blocks (only the slots holding an episode): the same episodes, less masked work.
    for block, halving, chunk in ((2, False, 7), (1, True, 7), (2, True, 6)):
        blocked, _ = _toy_kernel(kind, block, halving)
        r = EP.run_arm(blocked, None, None, start, 4, TOY_ACTIONS, 9, chunk, dtype=np.float64,
                       compiler_options=TOY_FAST)
        what = (block, halving, chunk)
        assert list(zip(r.success.tolist(), r.steps.tolist(), r.plan_calls.tolist())) == want, what
        assert r.chunk % block == 0 and r.chunk >= chunk, what  # the slots rounded up to whole blocks
        assert r.slot_rounds == int(r.plan_calls.sum()) <= r.planned < r.rounds * r.chunk, what
        if block == 1:
            assert r.planned == r.slot_rounds, what  # blocks of one slot: nothing masked


def test_plan_sizes():
    assert EP.plan_sizes(64, 0, True) == (64,) and EP.plan_sizes(8, 8, False) == (8,)
    assert EP.plan_sizes(64, 8, False) == (8,)
    assert EP.plan_sizes(64, 16, True) == (64, 32, 16)
    assert EP.plan_sizes(112, 16, True) == (64, 32, 16)  # 112 running slots: one block of each
    assert EP.plan_sizes(7, 1, True) == (4, 2, 1)
    with pytest.raises(ValueError, match="not a multiple"):
        EP.plan_sizes(60, 8, False)
    # The arms' smallest blocks on CPU: about 400 (oracle) and 800 (learned) dynamics rows.
    rs, cem = C.PlannerConfig("random-shooting"), C.PlannerConfig("cem")
    assert C._arm_blocks("oracle", rs) == (8, False) and C._arm_blocks("learned", rs) == (16, True)
    assert C._arm_blocks("oracle", cem) == (16, False) and C._arm_blocks("learned", cem) == (32, True)
    assert C._arm_blocks("learned", C.PlannerConfig(candidates=1000)) == (1, True)  # at least one slot


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["random-shooting", "cem"])
def test_an_arm_planning_with_its_env_executes_its_own_predictions(kind):
    """dynamics_is_env (the oracle arm) reads the executed prefix from the planner: the same episodes as stepping the env."""
    env = ToyEnv()
    score = lambda obs: jnp.abs(obs[:, 0] - 3.0) + 0.25 * jnp.abs(obs[:, 1])  # noqa: E731
    config = C.PlannerConfig(kind, horizon=4, candidates=3, iterations=2, samples=3, elites=1)
    stepping = EP.episode_kernel(env, lambda p, t: (lambda o, a: env.step_reward(o, a)[0]), score, config, 0.5)
    reading = EP.episode_kernel(env, None, score, config, 0.5, dynamics_is_env=True)
    start = np.random.default_rng(1).integers(-6, 7, (6, 2)).astype(np.float64)
    a, b = (EP.run_arm(k, None, None, start, 2, TOY_ACTIONS, 9, 4, dtype=np.float64, compiler_options=TOY_FAST)
            for k in (stepping, reading))
    assert a.success.tolist() == b.success.tolist() and a.steps.tolist() == b.steps.tolist()
    assert a.plan_calls.tolist() == b.plan_calls.tolist() and a.rounds == b.rounds
    assert 0 < a.success.sum() < 6


def test_an_empty_plan_ends_the_episode():
    """Predictions that are all NaN give no candidate a value: the episode ends there, a failure (as the reference)."""
    env = ToyEnv()
    config = C.PlannerConfig(horizon=4, candidates=3)
    kernel = EP.episode_kernel(env, lambda p, t: (lambda obs, a: obs + jnp.nan), lambda o: o[:, 0], config, 0.5)
    r = EP.run_arm(kernel, None, None, np.zeros((2, 2)), 0, TOY_ACTIONS, 9, 2, dtype=np.float64,
                   compiler_options=TOY_FAST)
    assert r.success.tolist() == [False, False] and r.steps.tolist() == [0, 0] and r.plan_calls.tolist() == [1, 1]


@pytest.mark.slow  # compiles its own start-state kernel (blocks of 3)
def test_start_states_are_a_pure_function_of_seed_and_episode(monkeypatch):
    oracle = wmel_jax.make_oracle(TASK)
    monkeypatch.setattr(EP, "START_BLOCK", 3)  # blocks of 3: 5 states come from two kernel calls
    EP._start_kernel.cache_clear()
    try:
        few, more = EP.start_states(oracle, 3, 2), EP.start_states(oracle, 3, 5)
        other = EP.start_states(oracle, 4, 2)
    finally:
        EP._start_kernel.cache_clear()
    np.testing.assert_array_equal(few, more[:2])
    assert not np.array_equal(other, few)
    # The task's reset distribution: the pole hangs down (cos theta near -1), the cart near the centre.
    assert np.all(more[:, 1] < -0.99) and np.all(np.abs(more[:, 0]) < 0.1)


# --------------------------------------------------------------------------- #
# the report
# --------------------------------------------------------------------------- #

REFERENCE_TOP_KEYS = {"environment", "metric", "learned_model", "cpg", "config", "training", "seed", "smoke_mode",
                      "varied_init", "oracle_scorecard", "learned_scorecard", "oracle_full", "learned_full"}
CPG_KEYS = ["oracle_success_rate", "learned_success_rate", "gap", "n_episodes_oracle", "n_episodes_learned",
            "gap_ci_low", "gap_ci_high", "verdict"]


def test_report_has_the_reference_layout_and_the_paired_statistics(both_arms):
    r = both_arms
    assert REFERENCE_TOP_KEYS <= set(r)
    assert list(r["cpg"]) == CPG_KEYS
    assert r["environment"] == "dmc_cartpole_swingup" and r["metric"] == "counterfactual_planning_gap"
    for arm in C.ARMS:
        results = r[f"{arm}_full"]["results"]
        assert len(results) == N and all(set(x) == {"success", "steps", "plan_calls"} for x in results)
        assert all(1 <= x["steps"] <= HORIZON and x["plan_calls"] >= 1 for x in results)
        assert all(x["success"] or x["steps"] == HORIZON for x in results)
        rate = np.mean([x["success"] for x in results])
        assert r["cpg"][f"{arm}_success_rate"] == rate == r[f"{arm}_scorecard"]["success_rate"]
        interval = r["success_intervals"][arm]
        assert interval["ci_low"] <= rate <= interval["ci_high"]
    assert r["cpg"]["gap"] == r["cpg"]["oracle_success_rate"] - r["cpg"]["learned_success_rate"]
    assert r["cpg"]["verdict"] in wmel_jax.planning.stats.VERDICTS
    assert set(r["paired"]) == {"bootstrap", "newcombe", "mcnemar"}
    assert r["paired"]["mcnemar"]["both"] + r["paired"]["mcnemar"]["oracle_only"] + \
        r["paired"]["mcnemar"]["learned_only"] + r["paired"]["mcnemar"]["neither"] == N
    cfg = r["config"]
    assert (cfg["planner"], cfg["num_candidates"], cfg["plan_horizon"]) == ("random-shooting", 50, 15)
    assert (cfg["benchmark_episodes"], cfg["benchmark_horizon"], cfg["seed"]) == (N, HORIZON, 0)
    assert r["training"]["tdmpc2_model_size"] == 1 and r["training"]["frame_skip"] == 1
    assert r["episodes_needed"]["half_width"] == 0.05
    assert r["steps"]["oracle"]["plan_calls"]["n"] == N
    json.dumps(r, allow_nan=False)


def test_cli_writes_json_and_figure_that_eval_downstream_reads(tmp_path, capsys, checkpoints):
    out, png = tmp_path / "cpg.json", tmp_path / "cpg.png"
    code, stdout, err = cpg_cli(GOOD, *small("-o", out, "--figure", png, "--timings"), capsys=capsys)
    assert code == 0, err
    # Progress elsewhere than a terminal: one stamped line per phase and note, each arm's episodes ended.
    for needle in ("] loading 1 model file(s)", f"] {TASK}: start states of {N} episodes", "] oracle arm: ",
                   "] learned arm (", f"{N}/{N} episodes ended"):
        assert needle in err, (needle, err)
    assert "timings: load_s " in stdout and "learned_run_s " in stdout
    doc = json.loads(out.read_text())
    assert list(doc["cpg"]) == CPG_KEYS
    assert png.read_bytes().startswith(PNG_SIGNATURE)
    for needle in ("oracle", "learned", "95% CI (Wilson)", "Agresti-Caffo", "McNemar", "+-0.05", "small sample"):
        assert needle in stdout, needle
    # The file feeds eval's downstream pairing unchanged.
    from wmel_jax import cli

    report = tmp_path / "eval.json"
    # Any cartpole model pairs with it (the suite's eval model: its kernels are compiled for tests/test_eval.py).
    model = checkpoints.adapter(1, obs_dim=5, action_dim=1, seed=0).converted
    code = cli.main(["eval", str(model), *small_eval_args("--downstream", out, "-o", report), "--no-cache"])
    capsys.readouterr()
    assert code == 0
    cell = json.loads(report.read_text())["cells"][0]
    assert cell["gap"] == doc["cpg"]["gap"] and cell["verdict"] == doc["cpg"]["verdict"]
    assert cell["context"]["oracle_success_rate"] == doc["cpg"]["oracle_success_rate"]
    assert cell["model_size"] == 1 and cell["seed"] == 0 and cell["context"]["downstream_json"] == str(out)


@pytest.mark.slow  # eval's kernels at a shape of its own
def test_eval_cpg_pairs_each_cell_with_its_gap_in_one_run(tmp_path, both_arms):
    from wmel_jax.pipeline import EvalOptions, run_eval

    report_path, cpg_path = tmp_path / "eval.json", tmp_path / "cpg.json"
    opts = EvalOptions([GOOD], n_states=150, k_steps=10, chunk_states=128, output=str(report_path),
                       cpg=C.CPGOptions([], episodes=N, chunk_episodes=CHUNK, horizon=HORIZON, output=str(cpg_path)))
    report = run_eval(opts)
    cell = report["cells"][0]
    assert cell["gap"] == both_arms["cpg"]["gap"] and cell["verdict"] == both_arms["cpg"]["verdict"]
    assert cell["m1_l2_onestep"] > 0 and cell["context"]["downstream_json"] == str(cpg_path)
    assert json.loads(cpg_path.read_text())["cpg"] == both_arms["cpg"]
    assert json.loads(report_path.read_text())["cells"][0]["gap"] == cell["gap"]


def test_eval_cpg_flags(tmp_path, capsys):
    from wmel_jax import cli

    code = cli.main(["eval", GOOD, "--cpg-output", str(tmp_path / "x.json"), "--no-cache"])
    err = capsys.readouterr().err
    assert code == 2 and "--cpg-output needs --cpg" in err and os.listdir(tmp_path) == []
    # Models of two tasks without --env: eval would group them, the gap is planned on one task.
    reacher = str(EXAMPLES_DIR / "reacher-easy-good.safetensors")
    code = cli.main(["eval", GOOD, reacher, "--cpg", "-o", str(tmp_path / "r.json"), "--no-cache"])
    err = capsys.readouterr().err
    assert code == 2 and err.splitlines()[-1].startswith("wmel-jax: error: --cpg plans on one task"), err
    assert os.listdir(tmp_path) == []


@pytest.mark.slow  # the suite's budget: see the module docstring
def test_several_models_share_one_oracle_arm_and_write_a_folder(tmp_path, monkeypatch, both_arms):
    calls = []
    real = C.run_arm

    def counting(kernel, params, *args, **kwargs):
        calls.append("oracle" if params is None else "learned")
        return real(kernel, params, *args, **kwargs)

    monkeypatch.setattr(C, "run_arm", counting)
    folder = tmp_path / "out"
    reports = C.run_cpg(C.CPGOptions([GOOD, WEAK], episodes=N, chunk_episodes=CHUNK, horizon=HORIZON,
                                     output=str(folder)))
    assert calls == ["oracle", "learned", "learned"]
    assert sorted(os.listdir(folder)) == sorted(f"{Path(m).stem}.cpg.json" for m in (GOOD, WEAK))
    oracle = [r["oracle_full"]["results"] for r in reports]
    assert oracle[0] == oracle[1] == both_arms["oracle_full"]["results"]
    assert reports[0]["learned_full"]["results"] == both_arms["learned_full"]["results"]


@pytest.mark.slow  # the suite's budget: see the module docstring
def test_the_oracle_arm_is_kept_beside_the_kernel_cache_for_later_runs(tmp_path, both_arms):
    import io

    from wmel_jax import kernel_cache
    from wmel_jax.progress import Progress

    log = io.StringIO()
    opts = C.CPGOptions([GOOD], episodes=N, chunk_episodes=CHUNK, horizon=HORIZON, arms="oracle")
    previous = kernel_cache.get_directory()
    kernel_cache.set_directory(tmp_path / "kernels")
    try:
        first = C.run_cpg(opts)[0]
        kept = list((tmp_path / "cpg-oracle").glob("*.json"))
        assert len(kept) == 1 and first["timings"]["oracle_from_cache"] is False
        second = C.run_cpg(opts, progress=Progress(log))[0]
        assert second["timings"]["oracle_from_cache"] is True and "oracle arm read from the cache" in log.getvalue()
        # Another seed is another oracle arm; a damaged file is ignored (and replaced).
        C.run_cpg(C.CPGOptions([GOOD], episodes=N, chunk_episodes=CHUNK, horizon=HORIZON, arms="oracle", seed=1))
        assert len(list((tmp_path / "cpg-oracle").glob("*.json"))) == 2
        kept[0].write_text('{"key": 1')
        third = C.run_cpg(opts)[0]
        assert third["timings"]["oracle_from_cache"] is False
    finally:
        kernel_cache.set_directory(previous)
    for report in (first, second, third):
        assert report["oracle_full"]["results"] == both_arms["oracle_full"]["results"]


@pytest.mark.parametrize("arm", ["oracle", pytest.param("learned", marks=pytest.mark.slow)])
def test_one_arm_keeps_the_layout_with_the_other_null(tmp_path, capsys, arm, both_arms):
    out = tmp_path / "one.json"
    code, stdout, err = cpg_cli(GOOD, *small("--arms", arm, "-o", out), capsys=capsys)
    assert code == 0, err
    doc = json.loads(out.read_text())
    other = "learned" if arm == "oracle" else "oracle"
    assert set(doc) == set(both_arms)
    assert list(doc["cpg"]) == CPG_KEYS
    for key in ("gap", "gap_ci_low", "gap_ci_high", "verdict", f"{other}_success_rate", f"n_episodes_{other}"):
        assert doc["cpg"][key] is None, key
    assert doc[f"{other}_full"] is None and doc[f"{other}_scorecard"] is None and doc["paired"] is None
    assert doc[f"{arm}_full"]["results"] == both_arms[f"{arm}_full"]["results"]
    assert "one arm only" in stdout


# --------------------------------------------------------------------------- #
# bad input: one line, exit 2, nothing written
# --------------------------------------------------------------------------- #


def _assert_user_error(capsys, folder: Path, *argv, match: str) -> None:
    before = set(os.listdir(folder))
    code, out, err = cpg_cli(*argv, capsys=capsys)
    assert code == 2, (out, err)
    err = without_progress(err)  # the phases begun before the mistake was found
    assert err.startswith("wmel-jax: error: ") and err.count("\n") == 1, err
    assert match.lower() in err.lower(), err
    assert set(os.listdir(folder)) == before, "a failed cpg left a file behind"


@pytest.mark.parametrize(
    "flags, match",
    [
        (["--planner", "mppi"], "unknown planner 'mppi'"),
        (["--episodes", "0"], "--episodes must be an integer"),
        (["--episodes", "-3"], "--episodes must be an integer"),
        (["--horizon", "10001"], "between 1 and 10,000"),
        (["--horizon", "0"], "between 1 and 10,000"),
        (["--candidates", "0"], "candidates must be a positive int"),
        (["--plan-horizon", "-1"], "horizon must be a positive int"),
        (["--planner", "cem", "--cem-elites", "30"], "at most its samples"),
        (["--cem-samples", "0"], "samples must be a positive int"),
        (["--cem-smoothing", "2"], "[0, 1]"),
        (["--arms", "oracle,planner"], "unknown arm 'planner'"),
        (["--arms", ","], "no arm asked for"),
        (["--chunk-episodes", "0"], "--chunk-episodes must be an integer"),
        (["--chunk-episodes", "70000"], "between 1 and 65,536"),
        (["--episodes", "1000001"], "between 1 and 1,000,000"),
        (["--seed", "-1"], "from 0 to 2**63 - 1"),
        (["--env", "reacher-easy"], "do not fit reacher-easy"),
        (["--env", "walker-walk"], "unknown task"),
    ],
)
def test_bad_flags(tmp_path, capsys, flags, match):
    _assert_user_error(capsys, tmp_path, GOOD, *small(*flags, "-o", tmp_path / "x.json"), match=match)


def test_a_model_without_a_decoder_cannot_plan_in_observation_space(tmp_path, capsys, checkpoints):
    upstream = checkpoints.upstream(1, obs_dim=5, action_dim=1).converted
    _assert_user_error(capsys, tmp_path, upstream, *small("--env", TASK, "-o", tmp_path / "x.json"),
                       match="no observation decoder")


@pytest.mark.slow  # the suite's budget: see the module docstring
def test_a_model_that_cannot_plan_is_skipped_beside_others(tmp_path, capsys, checkpoints, both_arms):
    upstream = checkpoints.upstream(1, obs_dim=5, action_dim=1).converted
    code, out, err = cpg_cli(GOOD, upstream, *small("--env", TASK, "-o", tmp_path / "out"), capsys=capsys)
    assert code == 0, err
    assert f"skipped {upstream}: no observation decoder" in err
    assert os.listdir(tmp_path / "out") == [f"{Path(GOOD).stem}.cpg.json"]
    doc = json.loads((tmp_path / "out" / f"{Path(GOOD).stem}.cpg.json").read_text())
    assert doc["learned_full"]["results"] == both_arms["learned_full"]["results"]


def test_missing_model_and_existing_output(tmp_path, capsys):
    _assert_user_error(capsys, tmp_path, tmp_path / "nope.safetensors", *small(), match="does not exist")
    # Several models into a folder the run creates: a failure removes it again.
    _assert_user_error(capsys, tmp_path, GOOD, tmp_path / "nope.safetensors", *small("--env", "walker-walk", "-o",
                       tmp_path / "new-folder"), match="unknown task")
    existing = tmp_path / "taken.json"
    existing.write_text("{}")
    _assert_user_error(capsys, tmp_path, GOOD, *small("-o", existing), match="--force")
    assert existing.read_text() == "{}"


def test_an_interrupted_run_leaves_no_file(tmp_path, capsys, monkeypatch):
    real = C.run_arm

    def interrupted(kernel, params, *args, **kwargs):
        if params is not None:
            raise KeyboardInterrupt
        return real(kernel, params, *args, **kwargs)

    monkeypatch.setattr(C, "run_arm", interrupted)
    code, _, err = cpg_cli(GOOD, *small("-o", tmp_path / "x.json", "--figure", tmp_path / "x.png"), capsys=capsys)
    assert code == 130 and "interrupted" in err
    assert os.listdir(tmp_path) == []
