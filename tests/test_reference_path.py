"""The per-sample reference path: dm_control oracle, torch batch-of-1 model, state batch, run_reference, CLI.

The oracle is checked against dm_control stepping its own env (the two must
agree to float64 rounding: the oracle rebuilds the physics state from the
observation, which is exact up to atan2 and the reacher target's
finger + to_target sum). The torch callable is checked against a batched
forward pass of the same module.
"""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch

from wmel_jax.benchmarks import reference as R
from wmel_jax.converters import tdmpc2_torch as T

TASKS = list(R.TASKS)

#: Oracle vs dm_control's own step: both are float64 MuJoCo from (nearly) the same
#: state; measured differences are <= 2e-15.
ORACLE_ATOL = 1e-12
#: Batch-of-1 vs batched float32 forward of the same torch module (different
#: matmul blocking): measured <= 9e-8 on outputs of order 0.3. Rounding the
#: inputs to float16 moves the outputs by 2e-6..8e-6, which this must catch.
TORCH_ATOL = 1e-6


def _rollout(task: str, steps: int, seed: int, episode: int = 20):
    """(obs_t, action_t, obs_t+1) from dm_control stepping its own env, resets every ``episode``."""
    env = R.make_env(task, random_seed=seed)
    actions = R.default_actions(task)
    rng = random.Random(seed)
    out = []
    obs = None
    for t in range(steps):
        if t % episode == 0:
            obs = R.flatten_observation(env.reset().observation)
        a = rng.choice(actions)
        nxt = R.flatten_observation(env.step(np.asarray(a, dtype=np.float32)).observation)
        out.append((obs, a, nxt))
        obs = nxt
    return out


@pytest.mark.parametrize("task", TASKS)
def test_observation_is_dm_control_order_which_is_sorted(task):
    env = R.make_env(task)
    keys = list(env.reset().observation.keys())
    assert keys == sorted(keys)
    obs_dim = {"cartpole-swingup": 5, "reacher-easy": 6, "acrobot-swingup": 6}[task]
    assert len(R.flatten_observation(env.reset().observation)) == obs_dim


@pytest.mark.parametrize("task", TASKS)
def test_oracle_equals_env_step(task):
    """Across 3 episodes (3 reacher targets), oracle(obs_t, a_t) is dm_control's obs_t+1."""
    oracle_step, _, actions = R.dm_control_oracle(task)
    assert actions == R.default_actions(task)
    worst = 0.0
    for obs, a, nxt in _rollout(task, 60, seed=3):
        got = oracle_step(obs, a)
        assert isinstance(got, tuple) and all(isinstance(x, float) for x in got)
        worst = max(worst, float(np.max(np.abs(np.subtract(got, nxt)))))
    assert worst <= ORACLE_ATOL, f"{task}: oracle differs from env.step by {worst:.3e}"


@pytest.mark.parametrize("task", TASKS)
def test_write_state_reproduces_the_observation(task):
    """Rebuilding the state from an observation gives back that observation (reacher: incl. its target)."""
    src = R.make_env(task, random_seed=11)
    dst = R.make_env(task, random_seed=12)  # another episode: another reacher target
    dst.reset()
    rng = np.random.default_rng(0)
    for episode in range(3):
        src.reset()
        for _ in range(5):
            src.step(rng.choice([-1.0, 1.0], size=src.action_spec().shape).astype(np.float32))
        obs = R.flatten_observation(src.task.get_observation(src.physics))
        R.write_state(task, dst.physics, obs)
        again = R.flatten_observation(dst.task.get_observation(dst.physics))
        np.testing.assert_allclose(again, obs, rtol=0, atol=ORACLE_ATOL, err_msg=f"{task} episode {episode}")
        np.testing.assert_allclose(dst.physics.data.qvel, src.physics.data.qvel, rtol=0, atol=0)
        if task == "reacher-easy":
            # qpos is observed exactly; the target comes back from finger + to_target.
            np.testing.assert_array_equal(dst.physics.data.qpos, src.physics.data.qpos)
            np.testing.assert_allclose(dst.physics.named.model.geom_pos["target", :2],
                                       src.physics.named.model.geom_pos["target", :2], rtol=0, atol=ORACLE_ATOL)


@pytest.mark.parametrize("task, joints, rebuilt", [
    # hand-worked: the observation keeps cos/sin only, so the oracle sees the angle mod 2 pi
    ("cartpole-swingup", {"hinge_1": 2.5 + 4 * math.pi}, {"hinge_1": 2.5}),
    ("cartpole-swingup", {"hinge_1": -0.7 - 6 * math.pi}, {"hinge_1": -0.7}),
    # shoulder = atan2 of the upper arm = 1.0; elbow = (lower arm's world angle -1.0) - 1.0
    ("acrobot-swingup", {"shoulder": 1.0 + 2 * math.pi, "elbow": -2.0 - 4 * math.pi},
     {"shoulder": 1.0, "elbow": -2.0}),
])
def test_angles_come_back_wrapped_and_step_the_same(task, joints, rebuilt):
    """An unwrapped joint angle is observed as cos/sin; the oracle rebuilds it wrapped,
    and its step equals dm_control's from the unwrapped state."""
    src = R.make_env(task)
    src.reset()
    with src.physics.reset_context():
        for name, angle in joints.items():
            src.physics.named.data.qpos[name] = angle
        src.physics.data.qvel[:] = np.linspace(0.3, -0.5, src.physics.model.nv)
    obs = R.flatten_observation(src.task.get_observation(src.physics))

    probe = R.make_env(task)
    probe.reset()
    R.write_state(task, probe.physics, obs)
    for name, want in rebuilt.items():
        assert float(probe.physics.named.data.qpos[name][0]) == pytest.approx(want, abs=1e-12), name

    oracle_step, _, _ = R.dm_control_oracle(task)
    action = (0.5,)
    want = R.flatten_observation(src.step(np.asarray(action, dtype=np.float32)).observation)
    np.testing.assert_allclose(oracle_step(obs, action), want, rtol=0, atol=ORACLE_ATOL)


@pytest.mark.parametrize("frame_skip", [1, 3])
def test_oracle_outlives_the_time_limit_and_repeats_frame_skip(frame_skip):
    """1,200 env steps on one (state, action) all agree: the 1000-step time limit never
    resets the oracle's env mid-call; frame_skip 3 is three env.steps with one action."""
    task = "cartpole-swingup"
    (obs, a, _), = _rollout(task, 1, seed=5)
    env = R.make_env(task)
    env.reset()
    R.write_state(task, env.physics, obs)
    for _ in range(frame_skip):
        ts = env.step(np.asarray(a, dtype=np.float32))
    want = R.flatten_observation(ts.observation)

    oracle_step, _, _ = R.dm_control_oracle(task, frame_skip=frame_skip)
    calls = 1200 // frame_skip  # past dm_control's 1000-step limit
    outs = {oracle_step(obs, a) for _ in range(calls)}
    assert len(outs) == 1
    np.testing.assert_allclose(outs.pop(), want, rtol=0, atol=ORACLE_ATOL)


def test_oracle_rejects_bad_frame_skip():
    with pytest.raises(ValueError, match="frame_skip"):
        R.dm_control_oracle("cartpole-swingup", frame_skip=0)


@pytest.mark.parametrize("task", TASKS)
def test_collect_states_is_seeded_and_resets_every_25(task):
    n = 60
    states, taken = R.rollout_states(task, n, seed=7)
    assert states == R.collect_states(task, n, seed=7)
    assert states != R.collect_states(task, n, seed=8)
    assert len(states) == n and all(isinstance(x, float) for x in states[0])

    # States 0, 25, 50 are the env's 1st, 2nd, 3rd reset ({"random": 0}); nothing else resets.
    fresh = R.make_env(task, 0)
    for i in (0, 25, 50):
        assert states[i] == R.flatten_observation(fresh.reset().observation), i
    assert [i for i, a in enumerate(taken) if a is None] == [24, 49, n - 1]

    # The actions are random.Random(seed).choice over the action set, one per non-reset step,
    # and each next state is that action's successor.
    rng = random.Random(7)
    actions = R.default_actions(task)
    assert [a for a in taken if a is not None] == [rng.choice(actions) for _ in range(n - 3)]
    oracle_step, _, _ = R.dm_control_oracle(task)
    for i in (0, 10, 30, 58):
        np.testing.assert_allclose(oracle_step(states[i], taken[i]), states[i + 1], rtol=0, atol=ORACLE_ATOL)


def test_reference_action_sequence_draws_from_seed_plus_one():
    actions = R.default_actions("reacher-easy")
    assert len(actions) == 9 and actions[0] == (-1.0, -1.0) and actions[1] == (-1.0, 0.0)
    seq = R.reference_action_sequence(actions, 10, seed=4)
    rng = random.Random(5)
    assert seq == [rng.choice(actions) for _ in range(10)]
    assert seq == R.reference_action_sequence(actions, 10, seed=4)


# --------------------------------------------------------------------------- #
# torch model, batch of 1
# --------------------------------------------------------------------------- #


def _save_random_adapter(path, task, seed=0, action_blind=False):
    obs_dim = {"cartpole-swingup": 5, "reacher-easy": 6, "acrobot-swingup": 6}[task]
    actions = R.default_actions(task)
    model = T.build_adapter(1, obs_dim, len(actions[0]), seed=seed, decoder_hidden=64)
    if action_blind:
        with torch.no_grad():
            model.dynamics[0].weight[:, -len(actions[0]):] = 0.0  # the action columns
    kwargs = ({"action_levels": [a[0] for a in actions]} if len(actions[0]) == 1
              else {"action_set": [list(a) for a in actions]})
    T.save_adapter(model, path, meta={"frame_skip": 1, "task": task}, **kwargs)
    return model


@pytest.mark.parametrize("task", ["cartpole-swingup", "reacher-easy"])
def test_torch_step_equals_batched_forward(tmp_path, task):
    model = _save_random_adapter(tmp_path / "m.pt", task, seed=1)
    step, actions = R.torch_model_step(tmp_path / "m.pt")
    assert actions == R.default_actions(task)  # levels -> 1-tuples; pairs kept in order
    states = R.collect_states(task, 8, seed=0)
    obs = torch.tensor(states, dtype=torch.float32).repeat_interleave(len(actions), 0)
    act = torch.tensor(actions, dtype=torch.float32).repeat(len(states), 1)
    with torch.no_grad():
        batched = model.predict(obs, act).numpy().reshape(len(states), len(actions), -1)
    single = np.array([[step(s, a) for a in actions] for s in states])
    assert isinstance(step(states[0], actions[0])[0], float)
    np.testing.assert_allclose(single, batched, rtol=0, atol=TORCH_ATOL)
    # A different model gives different outputs (the callable really runs this checkpoint).
    _save_random_adapter(tmp_path / "other.pt", task, seed=2)
    other, _ = R.torch_model_step(tmp_path / "other.pt")
    assert np.max(np.abs(np.subtract(other(states[0], actions[0]), single[0, 0]))) > 1e-3


# --------------------------------------------------------------------------- #
# run_reference
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("task", TASKS)
def test_run_reference_on_a_tiny_random_model(tmp_path, task):
    _save_random_adapter(tmp_path / "m.pt", task)
    n, k = 10, 3
    got = R.run_reference(tmp_path / "m.pt", task, n_states=n, k_steps=k, seed=0)
    assert math.isfinite(got["m1_l2_onestep"]) and got["m1_l2_onestep"] > 0
    assert len(got["m2_curve"]) == k and got["m2_l2_kstep"] == got["m2_curve"][-1]
    assert all(math.isfinite(v) and v >= 0 for v in got["m2_curve"])
    m3 = got["m3_action_agreement"]
    assert m3 is None or -1.0 <= m3 <= 1.0
    assert 0 <= got["m3_states_used"] <= n and (m3 is None) == (got["m3_states_used"] == 0)
    # Calls per model and oracle: M1 and M3 each N x A one-step calls, M2 N x k.
    a_count = len(R.default_actions(task))
    assert got["calls"] == {"model": 2 * n * a_count + n * k, "oracle": 2 * n * a_count + n * k}
    assert got["frame_skip"] == 1 and got["n_states"] == n and got["k_steps"] == k
    assert set(got["timings"]) == {"setup_s", "collect_states_s", "metrics_s", "total_s"}

    # The same states and sequence passed explicitly give the same metrics.
    states = np.array(R.collect_states(task, n, 0))
    seq = np.array(R.reference_action_sequence(R.default_actions(task), k, 0))
    again = R.run_reference(tmp_path / "m.pt", task, states=states, action_sequence=seq)
    for key in ("m1_l2_onestep", "m2_curve", "m3_action_agreement", "m3_states_used"):
        assert again[key] == got[key], key


def test_action_blind_model_has_no_m3(tmp_path):
    task = "acrobot-swingup"
    _save_random_adapter(tmp_path / "blind.pt", task, action_blind=True)
    step, actions = R.torch_model_step(tmp_path / "blind.pt")
    s = R.collect_states(task, 1, 0)[0]
    assert len({step(s, a) for a in actions}) == 1  # really blind to the action
    got = R.run_reference(tmp_path / "blind.pt", task, n_states=10, k_steps=2)
    assert got["m3_action_agreement"] is None and got["m3_states_used"] == 0
    assert math.isfinite(got["m1_l2_onestep"])


def test_run_reference_rejects_mismatched_inputs(tmp_path):
    from wmel_jax.errors import WmelError

    _save_random_adapter(tmp_path / "m.pt", "cartpole-swingup")
    with pytest.raises(WmelError, match="obs_dim 5 and action_dim 1"):
        R.run_reference(tmp_path / "m.pt", "reacher-easy", n_states=2, k_steps=1)
    with pytest.raises(WmelError, match=r"states must have shape \(n, 5\)"):
        R.run_reference(tmp_path / "m.pt", "cartpole-swingup", states=np.zeros((3, 6)))
    with pytest.raises(WmelError, match="NaN"):
        R.run_reference(tmp_path / "m.pt", "cartpole-swingup", states=np.full((3, 5), np.nan))
    with pytest.raises(WmelError, match=r"action sequence must have shape \(n, 1\)"):
        R.run_reference(tmp_path / "m.pt", "cartpole-swingup", n_states=2, action_sequence=np.zeros((3, 2)))
    with pytest.raises(WmelError, match="unknown task"):
        R.run_reference(tmp_path / "m.pt", "pendulum-swingup")


def test_cli_writes_json_and_fails_cleanly(tmp_path, capsys):
    _save_random_adapter(tmp_path / "m.pt", "cartpole-swingup")
    states = np.array(R.collect_states("cartpole-swingup", 4, 1))
    np.save(tmp_path / "states.npy", states)
    np.save(tmp_path / "seq.npy", np.array([[1.0], [-0.5]]))
    out = tmp_path / "out.json"
    rc = R.main([str(tmp_path / "m.pt"), "--states", str(tmp_path / "states.npy"),
                 "--action-sequence", str(tmp_path / "seq.npy"), "-o", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["task"] == "cartpole-swingup"  # from the checkpoint's meta
    assert report["n_states"] == 4 and report["k_steps"] == 2 and report["states_given"]
    assert report["action_sequence"] == [[1.0], [-0.5]]
    assert "M1" in capsys.readouterr().out

    np.save(tmp_path / "bad.npy", states[:, :4])
    bad_out = tmp_path / "bad.json"
    rc = R.main([str(tmp_path / "m.pt"), "--states", str(tmp_path / "bad.npy"), "-o", str(bad_out)])
    err = capsys.readouterr().err
    assert rc == 2 and not bad_out.exists()
    assert err.startswith("reference: error: states must have shape (n, 5)") and err.count("\n") == 1
    rc = R.main([str(tmp_path / "missing.pt"), "--env", "cartpole-swingup"])
    assert rc == 2 and "does not exist" in capsys.readouterr().err
