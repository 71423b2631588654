"""sample_states and the reset distributions against dm_control, and bad input.

Distribution tests: two-sample Kolmogorov-Smirnov per observation dimension,
2,000 states from wmel_jax (JAX keys) against 2,000 from dm_control (NumPy
generators), all seeded, so every test is deterministic (never flaky).

* Resets are independent draws: the usual KS p-value applies.
* sample_states' 2,000 states are 80 episodes of 25 strongly correlated
  states (acrobot barely moves in 24 steps of 0.01 s), so the iid KS p-value
  would be far too small (it treats 2,000 near-copies of 80 draws as 2,000
  draws). The p-value is instead an episode-level permutation test: the KS
  statistic of the real split against the KS statistics of random re-splits
  of the 160 whole episodes into two groups of 80, which is exact when the
  two samples' episodes come from one distribution.

KS_ALPHA = 5e-4 per dimension: with 17 dimensions over the three tasks the
chance of any false alarm is below 1% for whatever seeds, while the mistakes
these tests exist for (a wrong reset centre or scale, a wrong target radius,
episodes of the wrong length) give the smallest attainable p-value
(test_ks_has_power_against_a_wrong_distribution). With these seeds the
smallest p-value is 0.05 (reacher's shoulder angle); at 10x the sample
(20,000 states per side, two seed pairs) none comes below 0.14.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from scipy import stats

import dmc_reference as dmc
import wmel_jax
from wmel_jax.errors import WmelError

KS_ALPHA = 5e-4
N_KS = 2000
EPISODE = 25  # sample_states' default reset_every
N_PERMUTATIONS = 4999  # smallest attainable p-value 1 / 5000 = 2e-4 < KS_ALPHA
#: an episode step of sample_states equals the oracle's step from the previous observation
TRANSITION_TOL = 1e-9
N_RESET_DRAWS = 2000  # same batch as tests/test_oracle.py: one compiled reset kernel
N_PARITY_STATES = 1000  # step_all on 1,000 states: the kernel test_oracle.py compiled
TASKS = ["cartpole-swingup", "reacher-easy", "acrobot-swingup"]


def ks_pvalues(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """iid two-sample KS p-value per column."""
    return np.array([stats.ks_2samp(a[:, i], b[:, i]).pvalue for i in range(a.shape[1])])


def ks_statistics(values: np.ndarray, in_a: np.ndarray) -> np.ndarray:
    """KS statistic of one pooled column for each labelling: values (n,), in_a (B, n) bool -> (B,)."""
    order = np.argsort(values, kind="stable")
    ends = np.flatnonzero(np.diff(values[order], append=np.inf) != 0)  # last index of each tie run
    labels = in_a[:, order]
    cdf_a = np.cumsum(labels, axis=1)[:, ends] / labels[0].sum()
    cdf_b = np.cumsum(~labels, axis=1)[:, ends] / (~labels[0]).sum()
    return np.abs(cdf_a - cdf_b).max(axis=1)


def episode_permutation_ks_pvalues(a: np.ndarray, b: np.ndarray, episode: int, n_perm: int, seed: int) -> np.ndarray:
    """Per column: P(KS statistic >= observed) over random splits of whole episodes (a, b: (E * episode, d))."""
    ea, eb = len(a) // episode, len(b) // episode
    pooled = np.concatenate([a, b])
    episode_of = np.repeat(np.arange(ea + eb), episode)
    rng = np.random.default_rng(seed)
    splits = np.zeros((n_perm + 1, ea + eb), bool)
    splits[0, :ea] = True  # the real split first
    for k in range(1, n_perm + 1):
        splits[k, rng.choice(ea + eb, ea, replace=False)] = True
    in_a = splits[:, episode_of]
    p = []
    for i in range(a.shape[1]):
        d = ks_statistics(pooled[:, i], in_a)
        p.append((np.sum(d[1:] >= d[0] - 1e-12) + 1) / (n_perm + 1))
    return np.array(p)


#: The sampler is one kernel for every task, and its parts are checked per task below (resets against
#: dm_control's, episodes as the oracle's trajectories, whose physics tests/test_oracle.py checks per
#: task): the whole distribution against dm_control's on cartpole by default, the others with ``-m slow``.
@pytest.mark.parametrize("task", [pytest.param(t, marks=[] if t == "cartpole-swingup" else [pytest.mark.slow])
                                  for t in TASKS])
def test_sample_states_match_dm_control_random_rollouts(task):
    ours = np.asarray(wmel_jax.sample_states(jax.random.key(11), task, N_KS))
    theirs = dmc.random_action_states(task, N_KS, wmel_jax.make_oracle(task).actions, seed=12, reset_every=EPISODE)
    p = episode_permutation_ks_pvalues(ours, theirs, EPISODE, N_PERMUTATIONS, seed=15)
    assert (p > KS_ALPHA).all(), f"{task}: episode-permutation KS p-values per observation dimension {p.tolist()} (alpha {KS_ALPHA})"


@pytest.mark.parametrize("task", TASKS)
def test_reset_distribution_matches_dm_control(task):
    ours = np.asarray(wmel_jax.make_oracle(task).reset(jax.random.key(13), N_RESET_DRAWS))
    theirs = dmc.reset_states(task, N_RESET_DRAWS, seed=14)
    p = ks_pvalues(ours, theirs)
    assert (p > KS_ALPHA).all(), f"{task}: reset KS p-values {np.round(p, 6).tolist()} (alpha {KS_ALPHA})"


def test_ks_has_power_against_a_wrong_distribution():
    # Twice the velocity noise at a cartpole reset, or reacher targets out to
    # 0.25 instead of 0.20: each must be rejected far below KS_ALPHA.
    cart = np.asarray(wmel_jax.make_oracle("cartpole-swingup").reset(jax.random.key(13), N_RESET_DRAWS))
    wrong = cart.copy()
    wrong[:, 3:] *= 2
    assert ks_pvalues(cart, wrong)[3:].max() < 1e-10, "KS misses doubled reset velocity noise"
    reacher = np.asarray(wmel_jax.make_oracle("reacher-easy").reset(jax.random.key(13), N_RESET_DRAWS))
    wrong = reacher.copy()
    wrong[:, 2:4] *= 1.25
    # The episode test, against dm_control episodes four times as long.
    ours = np.asarray(wmel_jax.sample_states(jax.random.key(11), "cartpole-swingup", N_KS))
    longer = dmc.random_action_states("cartpole-swingup", N_KS, wmel_jax.make_oracle("cartpole-swingup").actions, seed=12, reset_every=4 * EPISODE)
    p = episode_permutation_ks_pvalues(ours, longer, EPISODE, N_PERMUTATIONS, seed=15)
    assert (p <= KS_ALPHA).sum() >= 4, f"episode KS misses 100-step episodes (p {p.tolist()})"
    radius_p = stats.ks_2samp(np.linalg.norm(reacher[:, 2:4], axis=1), np.linalg.norm(wrong[:, 2:4], axis=1)).pvalue
    assert radius_p < 1e-10, f"KS misses reacher targets 25% too far (p {radius_p:.3g})"


@pytest.mark.parametrize("task", TASKS)
def test_episodes_are_oracle_trajectories(task):
    """Within an episode each state is the oracle's step from the previous one under some default action."""
    oracle = wmel_jax.make_oracle(task)
    states = np.asarray(wmel_jax.sample_states(jax.random.key(11), task, N_KS))
    prev = states[: N_PARITY_STATES]
    succ = np.asarray(oracle.step_all(prev))  # (1000, A, obs_dim)
    nxt = states[1 : N_PARITY_STATES + 1]
    gap = np.abs(succ - nxt[:, None, :]).max(axis=2).min(axis=1)  # best action per transition
    within = (np.arange(N_PARITY_STATES) + 1) % 25 != 0  # row 25e is a fresh reset
    assert gap[within].max() <= TRANSITION_TOL, f"{task}: an in-episode transition is no oracle step (gap {gap[within].max():.3g})"
    assert gap[~within].min() > 1e-6, f"{task}: an episode boundary looks like a step: resets missing"
    # All actions get used.
    chosen = np.abs(succ - nxt[:, None, :]).max(axis=2)[within].argmin(axis=1)
    assert set(chosen.tolist()) == set(range(len(oracle.actions))), f"{task}: not every default action was drawn"


def _pad(states: np.ndarray) -> np.ndarray:
    """Pad a batch to N_PARITY_STATES rows (reusing the compiled step_all kernel)."""
    return np.concatenate([states, np.repeat(states[:1], N_PARITY_STATES - len(states), axis=0)])


def test_seeding_truncation_and_custom_actions():
    task = "acrobot-swingup"
    oracle = wmel_jax.make_oracle(task)
    a = np.asarray(wmel_jax.sample_states(jax.random.key(3), task, 30))
    b = np.asarray(wmel_jax.sample_states(jax.random.key(3), task, 50))  # also 2 episodes: same draws
    c = np.asarray(wmel_jax.sample_states(jax.random.key(4), task, 30))
    assert a.shape == (30, 6) and a.dtype == np.float64, f"shape/dtype {a.shape} {a.dtype}"
    np.testing.assert_array_equal(a, b[:30], err_msg="n truncates the same episodes")
    assert not np.array_equal(a, c), "the key is ignored"
    # acrobot resets have zero velocity: rows 0 and 25 only.
    zero_vel = np.flatnonzero((a[:, 4:] == 0).all(axis=1)).tolist()
    assert zero_vel == [0, 25], f"reset rows {zero_vel}"
    # A custom set (same shape as the default, so the same kernel): every
    # in-episode transition is the oracle's step under its one action, 0.5.
    custom = np.asarray(wmel_jax.sample_states(jax.random.key(3), task, 30, actions=np.full((5, 1), 0.5)))
    succ = np.asarray(oracle.step_all(_pad(custom[:-1])))[: len(custom) - 1, 3]  # action 0.5 is index 3
    within = (np.arange(len(custom) - 1) + 1) % EPISODE != 0
    gap = np.abs(succ - custom[1:]).max(axis=1)
    assert gap[within].max() <= TRANSITION_TOL, f"custom action set not applied (gap {gap[within].max():.3g})"


def test_frame_skip_two():
    # Each episode step is two physics steps: the frame_skip=2 oracle's step. The sampler's frame skip
    # is the same code on every task (each task's frame-skip-2 step is checked against dm_control in
    # tests/test_oracle.py): cartpole, the cheapest to compile.
    task = "cartpole-swingup"
    pairs = np.asarray(wmel_jax.sample_states(jax.random.key(5), task, 2 * N_PARITY_STATES, reset_every=2, frame_skip=2))
    succ = np.asarray(wmel_jax.make_oracle(task, frame_skip=2).step_all(pairs[0::2]))
    gap = np.abs(succ - pairs[1::2, None, :]).max(axis=2).min(axis=1)
    assert gap.max() <= TRANSITION_TOL, f"frame_skip=2 transitions are not fs=2 oracle steps (gap {gap.max():.3g})"


# --------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n": 0}, "n must be a positive int"),
        ({"n": -5}, "n must be a positive int"),
        ({"n": 2.5}, "n must be a positive int"),
        ({"reset_every": 0}, "reset_every must be a positive int"),
        ({"frame_skip": 0}, "frame_skip must be a positive int"),
        ({"task": "walker-walk"}, "unknown task 'walker-walk'; known tasks: acrobot-swingup, cartpole-swingup, reacher-easy"),
        ({"actions": [[2.0]]}, r"action set row 0 = \[2.0\] is outside the actuator range"),
        ({"actions": [[0.0], [np.nan]]}, "action set row 1 is not finite"),
        ({"actions": [[0.0, 0.0]]}, r"action sets must have shape \(N, action_dim=1\)"),
        ({"precision": "float128"}, "precision must be one of"),
    ],
)
def test_bad_arguments(kwargs, message):
    args = {"key": jax.random.key(0), "task": "cartpole-swingup", "n": 10}
    args.update(kwargs)
    with pytest.raises(WmelError, match=message):
        wmel_jax.sample_states(**args)


def test_key_must_be_a_jax_key():
    with pytest.raises(WmelError, match="key must be a JAX PRNG key"):
        wmel_jax.sample_states(0, "cartpole-swingup", 10)
