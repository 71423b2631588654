"""The MJX oracles against dm_control itself, their API, and what bad input gets.

Parity: for each task, 1,000 states (dm_control resets, dm_control
random-action rollouts, and stress states with large velocities, many pushing
a joint limit so the constraint solver works), every default action, frame
skip 1 and 2, against dm_control's ``env.step`` after setting that state.
Compiled kernels are shared through the oracles' own caches (``make_oracle``
returns one object per configuration), references through module fixtures.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dmc_reference as dmc
import wmel_jax
from wmel_jax.errors import WmelError
from wmel_jax.oracle import base

#: max |oracle - dm_control| over next observations, float64 oracle
F64_STEP_TOL = 1e-9
#: the same for the float32 oracle (its inputs are rounded to float32 too) ...
F32_STEP_TOL = 1e-4
#: ... except where a joint limit engages during the step. There the physics
#: is so sensitive that rounding the STATE to float32 (one float32 ulp per
#: entry) moves even the exact float64 successor by more than 1e-4
#: (test_float32_limit_tolerance_is_the_problems_own_sensitivity): the limit's
#: impedance changes across a 1 mm band, and reacher's wrist angle (~2.8 rad)
#: is known in float32 only to ~2.4e-7. No float32 oracle can do 1e-4 there.
F32_LIMIT_STEP_TOL = 1e-3
#: max |oracle - dm_control| over 10-step open-loop rollouts, float64
F64_ROLLOUT_TOL = 1e-8
#: the single-row and MJX constraint solvers agree this closely on qacc (float64)
SOLVER_AGREEMENT_TOL = 1e-9
#: max |oracle reward - dm_control reward| (summed over the action repeat), float64
F64_REWARD_TOL = 1e-9

N_RESET, N_RANDOM, N_STRESS = 250, 500, 250  # 1,000 parity states per task
N_ROLLOUT, ROLLOUT_K = 100, 10
N_RESET_DRAWS = 2000  # oracle.reset batch size, shared with tests/test_states.py
TASKS = ["cartpole-swingup", "reacher-easy", "acrobot-swingup"]


def test_registry_lists_the_three_tasks():
    assert wmel_jax.list_tasks() == sorted(TASKS), "list_tasks() must list exactly the registered tasks"


@pytest.fixture(scope="module")
def parity():
    """task -> (states (1000, obs_dim), {frame_skip: dm_control next obs (1000, A, obs_dim)},
    {frame_skip: (1000, A) True where a joint limit was engaged during the step},
    {frame_skip: (1000, A) dm_control's reward summed over the frame_skip env.steps})."""
    cache: dict[str, tuple] = {}

    def get(task: str):
        if task not in cache:
            actions = wmel_jax.make_oracle(task).actions
            states = np.concatenate(
                [
                    dmc.reset_states(task, N_RESET, seed=1),
                    dmc.random_action_states(task, N_RANDOM, actions, seed=2, reset_every=100),
                    dmc.stress_states(task, N_STRESS, seed=3),
                ]
            )
            cache[task] = (states, *dmc.next_observations(task, states, actions, max_frame_skip=2))
        return cache[task]

    return get


#: Every task at both frame skips in float64 by default, and float32 at frame skip 1 on cartpole and
#: acrobot (the chaotic one, where float32's error grows fastest); reacher's float32 adds no code path
#: (the same float32 step, another model), nor does float32 at frame skip 2 (the same compiled step,
#: twice): those run with ``-m slow``.
def _step_case_is_slow(task: str, frame_skip: int, precision: str) -> bool:
    return precision == "float32" and (frame_skip == 2 or task == "reacher-easy")


_STEP_CASES = [pytest.param(task, frame_skip, precision, id=f"{task}-{frame_skip}-{precision}",
                            marks=[pytest.mark.slow] if _step_case_is_slow(task, frame_skip, precision) else [])
               for task in TASKS for frame_skip in (1, 2) for precision in ("float64", "float32")]


@pytest.mark.parametrize("task,frame_skip,precision", _STEP_CASES)
def test_step_all_matches_dm_control(parity, task, frame_skip, precision):
    states, ref, limit, _ = parity(task)
    oracle = wmel_jax.make_oracle(task, frame_skip=frame_skip, precision=precision)
    out = oracle.step_all(states)
    assert out.dtype == np.dtype(precision), f"{task}: step_all returned {out.dtype}, not {precision}"
    err = np.abs(np.asarray(out, np.float64) - ref[frame_skip]).max(axis=2)  # (N, A)
    if precision == "float64":
        groups = {"all states": (np.ones_like(err, bool), F64_STEP_TOL)}
    else:
        engaged = limit[frame_skip]
        groups = {"no joint limit engaged": (~engaged, F32_STEP_TOL), "a joint limit engaged": (engaged, F32_LIMIT_STEP_TOL)}
    for name, (mask, tol) in groups.items():
        if not mask.any():
            continue
        worst = np.unravel_index(np.where(mask, err, -1).argmax(), err.shape)
        assert err[worst] <= tol, (
            f"{task} {precision} frame_skip={frame_skip} ({name}): max |oracle - dm_control| = {err[worst]:.3g} > {tol:g} "
            f"at state {worst[0]} {states[worst[0]].tolist()}, action {oracle.actions[worst[1]].tolist()}"
        )


def test_parity_states_engage_the_joint_limits(parity):
    for task in ("cartpole-swingup", "reacher-easy"):
        _, _, limit, _ = parity(task)
        assert limit[1].mean() > 0.05, f"{task}: only {limit[1].mean():.1%} of parity steps engage the joint limit"


def test_float32_limit_tolerance_is_the_problems_own_sensitivity():
    # A dm_control rollout state of reacher whose action (-1, -1) takes the
    # wrist just past its limit within 2 steps. Perturbing it by one float32
    # ulp per entry and stepping with the exact (float64) oracle moves the
    # successor by more than F32_STEP_TOL: the bound cannot hold for float32.
    state = np.array([-0.4430222092122388, -2.7506816283569524, -0.023974653212491107, -0.06454045663072557, 3.3335154421662088, 1.806655279059612])
    oracle = wmel_jax.make_oracle("reacher-easy", frame_skip=2)
    ulp = np.spacing(state.astype(np.float32)).astype(np.float64)
    signs = np.random.default_rng(6).choice([-1.0, 1.0], size=(N_RESET + N_RANDOM + N_STRESS, 6))  # parity batch shape: compiled already
    signs[0] = 0.0
    out = np.asarray(oracle.step_all(state + signs * ulp))[:, 0]  # action (-1, -1)
    spread = np.abs(out - out[0]).max()
    assert F32_STEP_TOL < spread <= F32_LIMIT_STEP_TOL, f"1-ulp float32 input perturbations move the float64 successor by {spread:.3g}"


@pytest.mark.parametrize("frame_skip", [1, 2])
@pytest.mark.parametrize("task", TASKS)
def test_rewards_match_dm_control(parity, task, frame_skip):
    """dm_control's own env.step(...).reward, summed over the frame_skip repeats, on 1,000 states x every action.

    step_all_reward runs the step kernel that step_all compiled above (the
    reward is one of its outputs), so this costs no compilation.
    """
    states, ref, _, rewards = parity(task)
    oracle = wmel_jax.make_oracle(task, frame_skip=frame_skip)
    nxt, out = oracle.step_all_reward(states)
    assert out.shape == rewards[frame_skip].shape and out.dtype == np.float64
    err = np.abs(np.asarray(out) - rewards[frame_skip])
    worst = np.unravel_index(err.argmax(), err.shape)
    assert err[worst] <= F64_REWARD_TOL, (
        f"{task} frame_skip={frame_skip}: max |reward - dm_control| = {err[worst]:.3g} > {F64_REWARD_TOL:g} "
        f"at state {worst[0]} {states[worst[0]].tolist()}, action {oracle.actions[worst[1]].tolist()}"
    )
    np.testing.assert_array_equal(np.asarray(nxt), np.asarray(oracle.step_all(states)), err_msg="step_all_reward's next obs")
    # Not a vacuous comparison: the rewards vary (reacher's is a 0/1 indicator, hit on some states).
    values = np.unique(rewards[frame_skip])
    assert (values.size >= 100) if task != "reacher-easy" else (rewards[frame_skip] > 0).mean() > 0.01, (
        f"{task}: the parity states' rewards barely vary ({values.size} distinct values)"
    )
    assert frame_skip == 1 or (rewards[2] > rewards[1]).any(), "frame_skip 2 must add the second step's reward"


def test_step_reward_is_step_all_reward_flattened(parity):
    """step_reward on the (state, action) pairs gives step_all_reward's numbers (one shared kernel)."""
    task = "acrobot-swingup"
    states, _, _, rewards = parity(task)
    oracle = wmel_jax.make_oracle(task, frame_skip=2)
    n, a = len(states), len(oracle.actions)
    nxt, reward = oracle.step_reward(np.repeat(states, a, axis=0), np.tile(oracle.actions, (n, 1)))
    assert nxt.shape == (n * a, oracle.obs_dim) and reward.shape == (n * a,)
    np.testing.assert_array_equal(np.asarray(reward).reshape(n, a), np.asarray(oracle.step_all_reward(states)[1]))
    assert np.abs(np.asarray(reward).reshape(n, a) - rewards[2]).max() <= F64_REWARD_TOL


@pytest.mark.parametrize("task", TASKS)
def test_step_matches_dm_control_and_step_all(parity, task):
    # The public step on every (state, action) pair, flattened as step_all
    # flattens them (so the compiled kernel is shared).
    states, ref, _, _ = parity(task)
    oracle = wmel_jax.make_oracle(task)
    n, a = len(states), len(oracle.actions)
    out = np.asarray(oracle.step(np.repeat(states, a, axis=0), np.tile(oracle.actions, (n, 1)))).reshape(n, a, -1)
    err = np.abs(out - ref[1]).max()
    assert err <= F64_STEP_TOL, f"{task}: step vs dm_control max diff {err:.3g} > {F64_STEP_TOL:g}"
    np.testing.assert_array_equal(out, np.asarray(oracle.step_all(states)), err_msg=f"{task}: step_all differs from step")


@pytest.mark.parametrize("task", ["reacher-easy"])
def test_general_mjx_path_matches_dm_control(parity, task):
    # The general path (MJX's own constraint solver, fwd_position,
    # fwd_acceleration and euler with LAPACK factorisations), taken by models
    # outside the fast cases, must match too.
    states, ref, _, _ = parity(task)
    oracle = base.Oracle(wmel_jax.oracle.task_class(task), 1, "float64", solver="mjx", factor="lapack")
    fast = wmel_jax.make_oracle(task).physics
    assert (oracle.physics.solver, oracle.physics.factor) == ("mjx", "lapack")
    assert (fast.solver, fast.factor) == ("single_row", "elementwise"), "the task should take the fast paths"
    err = np.abs(np.asarray(oracle.step_all(states)) - ref[1]).max()
    assert err <= F64_STEP_TOL, f"{task}: general-path oracle vs dm_control max diff {err:.3g} > {F64_STEP_TOL:g}"


def test_elementwise_cholesky_matches_lapack():
    rng = np.random.default_rng(9)
    for n in range(1, base.SMALL_NV + 1):
        x = rng.normal(size=(n, n))
        a = x @ x.T + n * np.eye(n)
        b = rng.normal(size=n)
        u = np.asarray(base.cholesky_upper(jnp.asarray(a)))
        np.testing.assert_allclose(u, np.linalg.cholesky(a).T, rtol=1e-12, atol=1e-12, err_msg=f"factor, n={n}")
        np.testing.assert_allclose(base.cholesky_solve_upper(jnp.asarray(u), jnp.asarray(b)), np.linalg.solve(a, b), rtol=1e-10, err_msg=f"solve, n={n}")


#: Level-0 codegen on cartpole and acrobot (the chaotic task) by default; reacher's with ``-m slow``.
@pytest.mark.parametrize("task", [pytest.param(t, marks=[pytest.mark.slow] if t == "reacher-easy" else [])
                                  for t in TASKS])
def test_small_problem_codegen_matches_dm_control(parity, task):
    """The evaluation's oracle kernel compiled for a small problem (XLA backend optimisation level 0).

    ``compiler_options(total_states)`` compiles the kernels of problems of at
    most FAST_COMPILE_MAX_STATES states at level 0 (faster compilation, slower
    code); they are held to the same tolerances against dm_control: next
    observations and rewards of every action (500 parity states), and
    10-step rollouts (against cold-started dm_control, as
    test_rollout_matches_dm_control explains). Chunks of the suite's
    evaluation shape, so the kernel the eval tests compiled is reused.
    """
    from conftest import EVAL_CHUNK, EVAL_K
    from wmel_jax import evaluate

    states, ref, _, rewards = parity(task)
    n = 500
    assert n <= base.FAST_COMPILE_MAX_STATES
    assert base.compiler_options(n).get("xla_backend_optimization_level") == 0
    assert "xla_backend_optimization_level" not in base.compiler_options(base.FAST_COMPILE_MAX_STATES + 1)
    picked = np.arange(len(states)) % (len(states) // n) == 0  # resets, rollouts and stress states alike
    oracle = wmel_jax.make_oracle(task)
    seq = oracle.actions[np.random.default_rng(5).integers(len(oracle.actions), size=EVAL_K)]
    problem = evaluate.make_problem(task, states=states[picked], action_sequence=seq)
    targets = evaluate.oracle_targets(problem, EVAL_CHUNK)
    err = np.abs(targets.next_obs - ref[1][picked]).max()
    assert err <= F64_STEP_TOL, f"{task}: level-0 oracle kernel vs dm_control max diff {err:.3g} > {F64_STEP_TOL:g}"
    err = np.abs(targets.rewards - rewards[1][picked]).max()
    assert err <= F64_REWARD_TOL, f"{task}: level-0 rewards vs dm_control max diff {err:.3g} > {F64_REWARD_TOL:g}"
    some = slice(None, None, n // N_ROLLOUT)
    cold = dmc.rollouts(task, states[picked][some], seq, 1, warmstart=False)
    err = np.abs(targets.trajectory[:, some] - cold).max()
    assert err <= F64_ROLLOUT_TOL, f"{task}: level-0 rollout vs cold-started dm_control max diff {err:.3g} > {F64_ROLLOUT_TOL:g}"


#: Rollouts at frame skip 1 by default (frame skip 2 on every task is checked step by step above,
#: and a rollout at frame skip 2 is the same compiled step, twice per action); they run with ``-m slow``.
_ROLLOUT_CASES = [pytest.param(task, frame_skip, id=f"{task}-{frame_skip}",
                               marks=[pytest.mark.slow] if frame_skip == 2 else [])
                  for task in TASKS for frame_skip in (1, 2)]


@pytest.mark.parametrize("task,frame_skip", _ROLLOUT_CASES)
def test_rollout_matches_dm_control(parity, task, frame_skip):
    """10-step open-loop rollouts, physics state carried between steps.

    Carried state includes MuJoCo's solver warm start: C MuJoCo's Newton
    solver starts from the previous step's answer and stops once an iteration
    improves the cost by less than opt.tolerance (1e-8), which on a few
    limit-contact trajectories (cartpole pressed into its slider stop) leaves
    it ~1e-7 off the exact solution of its own constraint problem. The oracle
    solves that problem exactly, as dm_control does when its solver starts
    cold (warm start disabled: same problem, same dynamics). So: all
    rollouts within 1e-8 of cold-started dm_control, and within 1e-8 of stock
    dm_control wherever stock and cold-started dm_control agree.
    """
    states, _, _, _ = parity(task)
    states = states[:: len(states) // N_ROLLOUT][:N_ROLLOUT]  # resets, rollouts and stress states alike
    oracle = wmel_jax.make_oracle(task, frame_skip=frame_skip)
    seq = oracle.actions[np.random.default_rng(5).integers(len(oracle.actions), size=ROLLOUT_K)]
    out = np.asarray(oracle.rollout(states, seq))
    assert out.shape == (ROLLOUT_K, N_ROLLOUT, oracle.obs_dim), f"{task}: rollout shape {out.shape}"
    cold = dmc.rollouts(task, states, seq, frame_skip, warmstart=False)
    stock = dmc.rollouts(task, states, seq, frame_skip)
    err_cold = np.abs(out - cold).max(axis=(0, 2))  # per state
    assert err_cold.max() <= F64_ROLLOUT_TOL, (
        f"{task} frame_skip={frame_skip}: rollout vs cold-started dm_control max diff {err_cold.max():.3g} > {F64_ROLLOUT_TOL:g} "
        f"from state {int(err_cold.argmax())}"
    )
    converged = np.abs(stock - cold).max(axis=(0, 2)) <= 1e-12
    assert converged.mean() >= 0.9, f"{task}: dm_control's warm and cold starts differ on {(~converged).sum()} of {N_ROLLOUT} rollouts"
    err_stock = np.abs(out - stock).max(axis=(0, 2))[converged]
    assert err_stock.max() <= F64_ROLLOUT_TOL, (
        f"{task} frame_skip={frame_skip}: rollout vs dm_control max diff {err_stock.max():.3g} > {F64_ROLLOUT_TOL:g}"
    )


def test_model_is_dm_controls_own_with_only_the_energy_flag_cleared():
    import copy

    import mujoco

    def mjb(model) -> np.ndarray:  # the whole compiled model, as MuJoCo saves it
        buf = np.zeros(mujoco.mj_sizeModel(model), np.uint8)
        mujoco.mj_saveModel(model, None, buf)
        return buf

    for task in TASKS:
        ours = base.load_mj_model(wmel_jax.oracle.task_class(task).xml_file)
        theirs = dmc.load_env(task, 0).physics.model.ptr  # before a reset moves reacher's target
        assert not ours.opt.enableflags & int(mujoco.mjtEnableBit.mjENBL_ENERGY), f"{task}: energy flag still set"
        flag_back = copy.copy(ours)
        flag_back.opt.enableflags = theirs.opt.enableflags
        assert np.array_equal(mjb(flag_back), mjb(theirs)), f"{task}: model differs from dm_control's beyond the energy flag"


# --------------------------------------------------------------------------
# score, reset, API
# --------------------------------------------------------------------------


def test_scores_worked_by_hand():
    cart = wmel_jax.make_oracle("cartpole-swingup")
    # -cos(theta): upright (cos 1) scores -1, hanging (cos -1) scores 1.
    np.testing.assert_allclose(cart.score([[0.3, 1.0, 0.0, 2.0, 3.0], [0.0, -1.0, 0.0, 0.0, 0.0]]), [-1.0, 1.0], err_msg="cartpole score")
    reacher = wmel_jax.make_oracle("reacher-easy")
    # |to_target| = |(0.03, 0.04)| = 0.05
    np.testing.assert_allclose(reacher.score([[1.0, 2.0, 0.03, 0.04, 5.0, 6.0]]), [0.05], err_msg="reacher score")
    acrobot = wmel_jax.make_oracle("acrobot-swingup")
    # -(cos_upper + cos_lower) = -(0.2 + 0.3)
    np.testing.assert_allclose(acrobot.score([[0.9, 0.1, 0.2, 0.3, 1.0, 1.0]]), [-0.5], err_msg="acrobot score")


@pytest.mark.parametrize("task", TASKS)
def test_reset_is_seeded_and_shaped(task):
    oracle = wmel_jax.make_oracle(task)
    n = N_RESET_DRAWS  # the size test_states draws too: one compile
    a, b = oracle.reset(jax.random.key(7), n), oracle.reset(jax.random.key(7), n)
    c = oracle.reset(jax.random.key(8), n)
    assert a.shape == (n, oracle.obs_dim) and a.dtype == np.float64, f"{task}: reset shape/dtype {a.shape} {a.dtype}"
    assert np.array_equal(a, b), f"{task}: reset with the same key differs"
    assert not np.array_equal(a, c), f"{task}: reset ignores the key"


def test_default_action_sets():
    assert wmel_jax.make_oracle("cartpole-swingup").actions.tolist() == [[-1.0], [-0.5], [0.0], [0.5], [1.0]]
    assert wmel_jax.make_oracle("acrobot-swingup").actions.tolist() == [[-1.0], [-0.5], [0.0], [0.5], [1.0]]
    reacher = wmel_jax.make_oracle("reacher-easy").actions
    assert reacher.shape == (9, 2) and {tuple(a) for a in reacher.tolist()} == {(x, y) for x in (-1.0, 0.0, 1.0) for y in (-1.0, 0.0, 1.0)}
    assert not reacher.flags.writeable, "the shared default action set must be read-only"


def test_static_configuration():
    o = wmel_jax.make_oracle("reacher-easy", frame_skip=2)
    assert (o.task, o.obs_dim, o.action_dim, o.frame_skip, o.precision) == ("reacher-easy", 6, 2, 2, "float64")
    assert o.ctrl_range.tolist() == [[-1.0, 1.0], [-1.0, 1.0]]
    assert wmel_jax.make_oracle("reacher-easy", frame_skip=2) is o, "one oracle per configuration (compiled once)"
    assert hash(o) == hash(base.Oracle(type(o.physics.task), 2, "float64")), "oracles hash by configuration"
    assert wmel_jax.oracle.DEFAULT_PRECISION == base.DEFAULT_PRECISION


def test_methods_jit_and_vmap():
    oracle = wmel_jax.make_oracle("acrobot-swingup")
    states = oracle.reset(jax.random.key(2), N_RESET_DRAWS)[:4]
    actions = jnp.asarray(oracle.actions[[0, 1, 3, 4]])
    # One compile for both: jit of vmap over a leading axis of 2 batches of 2.
    batched = jax.jit(jax.vmap(oracle.step))(states.reshape(2, 2, -1), actions.reshape(2, 2, -1)).reshape(4, -1)
    # Against the parity-shaped kernel: the same 4 states padded to the flattened parity batch.
    n_pairs = (N_RESET + N_RANDOM + N_STRESS) * len(oracle.actions)
    pad = lambda x: jnp.concatenate([x, jnp.repeat(x[:1], n_pairs - 4, axis=0)])  # noqa: E731
    direct = np.asarray(oracle.step(pad(states), pad(actions)))[:4]
    np.testing.assert_allclose(batched, direct, rtol=0, atol=1e-12, err_msg="jit(vmap(step))")
    np.testing.assert_allclose(jax.jit(oracle.score)(states), oracle.score(states), err_msg="jit(score)")


def test_float32_without_x64_and_float64_refused():
    with jax.enable_x64(False):
        with pytest.raises(WmelError, match="jax_enable_x64"):
            wmel_jax.make_oracle("cartpole-swingup", precision="float64")
        oracle = wmel_jax.make_oracle("cartpole-swingup", precision="float32")
        obs = oracle.reset(jax.random.key(0), 3)
        assert obs.dtype == jnp.float32 and oracle.score(obs).dtype == jnp.float32
    # An oracle made while x64 was on refuses to run float64 once it is off.
    f64 = wmel_jax.make_oracle("cartpole-swingup")
    with jax.enable_x64(False), pytest.raises(WmelError, match="jax_enable_x64"):
        f64.score(np.zeros((1, 5)))


def test_float32_oracle_under_global_x64_is_float32():
    oracle = wmel_jax.make_oracle("cartpole-swingup", precision="float32")
    obs = oracle.reset(jax.random.key(0), 3)
    assert obs.dtype == jnp.float32, "float32 oracle must compute in float32 even with x64 on"


# --------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------


def test_unknown_task_lists_known_ones():
    with pytest.raises(WmelError, match="unknown task 'cheetah-run'.*acrobot-swingup, cartpole-swingup, reacher-easy"):
        wmel_jax.make_oracle("cheetah-run")


@pytest.mark.parametrize("frame_skip", [0, -1, 1.5, 2.0, True, "2", None])
def test_bad_frame_skip(frame_skip):
    with pytest.raises(WmelError, match="frame_skip must be a positive int"):
        wmel_jax.make_oracle("cartpole-swingup", frame_skip=frame_skip)


def test_numpy_int_frame_skip_is_fine():
    assert wmel_jax.make_oracle("cartpole-swingup", frame_skip=np.int64(2)).frame_skip == 2


def test_bad_precision():
    with pytest.raises(WmelError, match="precision must be one of float32, float64"):
        wmel_jax.make_oracle("cartpole-swingup", precision="float16")


@pytest.fixture(scope="module")
def cart():
    return wmel_jax.make_oracle("cartpole-swingup")


@pytest.mark.parametrize("obs", [np.zeros((3, 4)), np.zeros((3, 6)), np.zeros(5), np.zeros((0, 5)), np.zeros((2, 3, 5))])
def test_wrong_state_shape(cart, obs):
    with pytest.raises(WmelError, match=r"states must have shape \(N, obs_dim=5\)"):
        cart.step(obs, np.zeros((len(obs), 1)))


def test_wrong_action_width(cart):
    with pytest.raises(WmelError, match=r"actions must have shape \(N, action_dim=1\)"):
        cart.step(np.zeros((2, 5)), np.zeros((2, 2)))


def test_states_and_actions_must_pair(cart):
    with pytest.raises(WmelError, match="3 states but 2 actions"):
        cart.step(np.zeros((3, 5)), np.zeros((2, 1)))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_state_names_first_bad_row(cart, bad):
    obs = np.zeros((6, 5))
    obs[4, 2] = bad
    obs[5, 0] = bad
    for call in (lambda: cart.step(obs, np.zeros((6, 1))), lambda: cart.step_all(obs), lambda: cart.score(obs), lambda: cart.rollout(obs, np.zeros((3, 1)))):
        with pytest.raises(WmelError, match=r"state row 4 is not finite.*\(2 bad rows\)"):
            call()


def test_non_finite_action_names_first_bad_row(cart):
    actions = np.zeros((3, 1))
    actions[1, 0] = np.nan
    with pytest.raises(WmelError, match="action row 1 is not finite"):
        cart.step(np.zeros((3, 5)), actions)
    with pytest.raises(WmelError, match="action_seq step row 1 is not finite"):
        cart.rollout(np.zeros((3, 5)), actions)


@pytest.mark.parametrize("value", [1.0001, -1.5, 10.0])
def test_action_outside_actuator_range(cart, value):
    actions = np.zeros((3, 1))
    actions[2, 0] = value
    with pytest.raises(WmelError, match=r"action row 2 = \[.*\] is outside the actuator range"):
        cart.step(np.zeros((3, 5)), actions)
    with pytest.raises(WmelError, match="outside the actuator range"):
        cart.step_all(np.zeros((3, 5)), actions)


def test_actuator_range_edges_are_allowed(cart):
    cart.validate_actions(np.array([[-1.0], [1.0]]))  # no error


def test_not_a_number_array(cart):
    with pytest.raises(WmelError, match="not a numeric array"):
        cart.step([["a"] * 5], [[0.0]])


def test_validators_are_host_side_and_public(cart):
    with pytest.raises(WmelError, match="state row 0 is not finite"):
        cart.validate_states(np.full((1, 5), np.nan))
    assert cart.validate_states(np.zeros((2, 5))).shape == (2, 5)


def test_wrong_shape_under_jit_is_a_trace_time_error(cart):
    with pytest.raises(WmelError, match=r"states must have shape \(N, obs_dim=5\)"):
        jax.jit(lambda o: cart.step(o, jnp.zeros((2, 1))))(jnp.zeros((2, 4)))


@pytest.mark.parametrize("n", [0, -3, 2.0, True])
def test_bad_reset_count(cart, n):
    with pytest.raises(WmelError, match="positive int n"):
        cart.reset(jax.random.key(0), n)


def test_map_chunks_equals_one_batch():
    # Chunked evaluation (CPU batches above 4,096 states) pads the last chunk
    # and drops the padding: same result as one batch, for pytrees too.
    xs = {"a": jnp.arange(10.0)[:, None] * jnp.ones((10, 3)), "b": jnp.arange(10)}

    def fn(x):
        return {"sum": x["a"].sum(axis=1) + x["b"], "rows": x["a"] * 2}

    for chunk in (None, 3, 4, 10, 16):
        out = base.map_chunks(fn, (xs,), chunk)
        np.testing.assert_array_equal(out["sum"], fn(xs)["sum"], err_msg=f"chunk {chunk}")
        np.testing.assert_array_equal(out["rows"], fn(xs)["rows"], err_msg=f"chunk {chunk}")


def test_map_chunks_cuts_equal_chunks():
    # 9 rows in chunks of at most 8: two chunks of 5 (one padded row), not 8 + 1
    # padded to 8 (7 rows of wasted physics).
    seen = []

    def fn(x):
        seen.append(x.shape[0])
        return x * 2

    out = base.map_chunks(fn, (jnp.arange(9.0),), 8)
    np.testing.assert_array_equal(out, np.arange(9.0) * 2)
    assert seen == [5]
