"""The per-call reference planner: SPEC section 9 one plan call and one env step at a time.

The independent slow path that ``wmel_jax.planning`` is checked against, and
the baseline its benchmark times. Plain Python over callables, as the
reference project plans:

- ``step(obs, action) -> next_obs``: the dynamics the planner rolls candidates
  through, ONE observation and ONE action at a time: the dm_control oracle
  (``wmel_jax.benchmarks.reference.dm_control_oracle``: the physics state
  rebuilt from the observation on every call, then ``env.step``) or a torch
  adapter checkpoint (``reference.adapter_step``: batch-of-1 ``torch.no_grad()``
  forward passes, ``decode(next(encode(obs), a))``);
- ``score(obs) -> float``: the task's score (lower is better);
- :class:`RandomShooting` and :class:`CEM`: the planners, their randomness a
  ``random.Random(seed)`` shared by every call (as the reference seeds one
  planner per arm); ``plan(obs, steps_left, candidates=None)`` returns the
  prefix to execute and a trace of what it saw. ``candidates`` injects the
  sequences (indices into the action set) instead of drawing them: the parity
  tests give both implementations the same ones;
- :func:`run_episode`: one episode in a dm_control env (:func:`env_at` puts one
  in the state of a given observation), the candidates optionally injected per
  plan call; :func:`run_episodes`: episodes in a real dm_control env, episode k built
  with ``task_kwargs={"random": seed * 100_000 + k}`` (the reference's
  varied-init seeding, so both arms of one seed see the same start states),
  the planner called with the steps left, its prefix executed open loop, the
  task's true reward compared with the success threshold after every env
  step (the start state never counts), 500 steps without success a failure.

With ``frame_skip`` > 1 an env step repeats the action ``frame_skip`` times
and its reward is the mean of those physics steps' rewards (TD-MPC2's summed
reward over the repeats, on the [0, 1] scale of the threshold), as
``wmel_jax.planning`` does.

Command line (one model, both arms, the reference's output layout)::

    python -m wmel_jax.benchmarks.reference_planner [MODEL.pt] --env TASK [--planner cem]
        [--episodes 10] [--seed 0] [--horizon 500] [--arms oracle,learned] [-o out.json]

torch and dm_control are imported by the functions that need them.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from typing import Any, Callable, Sequence

import numpy as np

from wmel_jax.benchmarks import reference as R

__all__ = [
    "SUCCESS_THRESHOLDS",
    "SEED_STRIDE",
    "value_and_cut",
    "RandomShooting",
    "CEM",
    "make_planner",
    "env_at",
    "run_episode",
    "run_episodes",
    "oracle_dynamics",
    "model_dynamics",
    "main",
]

#: The reward an env step must reach to end its episode as a success (SPEC section 9).
SUCCESS_THRESHOLDS = {"cartpole-swingup": 0.6, "acrobot-swingup": 0.6, "reacher-easy": 0.5}
#: Episode k of base seed b is built with task seed b * SEED_STRIDE + k (the reference's stride).
SEED_STRIDE = 100_000

Step = Callable[[Sequence[float], Sequence[float]], Sequence[float]]
Score = Callable[[Sequence[float]], float]


def value_and_cut(step: Step, score: Score, obs: Sequence[float], sequence: Sequence[Any]) -> tuple[float, int]:
    """(value, cut) of one candidate: roll it, score states 1..H; scan from the final score, strict improvement.

    The value is the final step's score unless an earlier step scores strictly
    lower; the cut is the (1-based) step where the value is first reached,
    the final step (H) on a tie with it.
    """
    trajectory = []
    state = obs
    for action in sequence:
        state = step(state, action)
        trajectory.append(state)
    best = float(score(trajectory[-1]))
    cut = len(sequence)
    for i, state in enumerate(trajectory, start=1):
        s = float(score(state))
        if s < best:
            best, cut = s, i
    return best, cut


class RandomShooting:
    """Random shooting: ``candidates`` uniform sequences of ``min(horizon, steps_left)`` actions per call."""

    def __init__(self, step: Step, score: Score, actions: Sequence[Any], *, candidates: int = 50, horizon: int = 15,
                 seed: int | None = None):
        if candidates < 1 or horizon < 1 or not actions:
            raise ValueError("candidates and horizon must be positive and the action set non-empty")
        self.step, self.score = step, score
        self.actions = [tuple(float(x) for x in a) for a in actions]
        self.candidates, self.horizon = candidates, horizon
        self.rng = random.Random(seed)
        self.dynamics_calls_per_plan = candidates * horizon

    def plan(self, obs: Sequence[float], steps_left: int, candidates: Sequence[Sequence[int]] | None = None
             ) -> tuple[list[tuple[float, ...]], dict[str, Any]]:
        """(prefix to execute, trace {candidates, values, cuts, chosen}); candidates: (C, >= H) action indices."""
        if steps_left <= 0:
            return [], {}
        h = min(self.horizon, steps_left)
        if candidates is None:
            drawn = [[self.rng.randrange(len(self.actions)) for _ in range(h)] for _ in range(self.candidates)]
        else:
            drawn = [[int(i) for i in c[:h]] for c in candidates]
        best_value, best_prefix, chosen = math.inf, [], None
        values, cuts = [], []
        for j, seq in enumerate(drawn):
            value, cut = value_and_cut(self.step, self.score, obs, [self.actions[i] for i in seq])
            values.append(value)
            cuts.append(cut)
            if value < best_value:
                best_value, best_prefix, chosen = value, [self.actions[i] for i in seq[:cut]], j
        return best_prefix, {"candidates": drawn, "values": values, "cuts": cuts, "chosen": chosen}


class CEM:
    """Cross-entropy method over the discrete action set (SPEC section 9 defaults: 3 x 24, 6 elites, 0.1)."""

    def __init__(self, step: Step, score: Score, actions: Sequence[Any], *, iterations: int = 3, samples: int = 24,
                 elites: int = 6, smoothing: float = 0.1, horizon: int = 15, seed: int | None = None):
        if min(iterations, samples, elites, horizon) < 1 or elites > samples or not 0.0 <= smoothing <= 1.0:
            raise ValueError("bad CEM sizes")
        self.step, self.score = step, score
        self.actions = [tuple(float(x) for x in a) for a in actions]
        self.iterations, self.samples, self.elites = iterations, samples, elites
        self.smoothing, self.horizon = smoothing, horizon
        self.rng = random.Random(seed)
        self.dynamics_calls_per_plan = iterations * samples * horizon

    def plan(self, obs: Sequence[float], steps_left: int, candidates: Sequence[Any] | None = None
             ) -> tuple[list[tuple[float, ...]], dict[str, Any]]:
        """(prefix, trace: one dict per iteration {candidates, values, cuts, order, probs, best_value, best_length}).

        candidates: (iterations, samples, >= H) action indices instead of draws.
        """
        if steps_left <= 0:
            return [], {}
        h = min(self.horizon, steps_left)
        n = len(self.actions)
        uniform = [1.0 / n] * n
        probs = [list(uniform) for _ in range(h)]
        best_value, best_prefix = math.inf, []
        trace = []
        for it in range(self.iterations):
            if candidates is None:
                drawn = [[self.rng.choices(range(n), weights=probs[t], k=1)[0] for t in range(h)]
                         for _ in range(self.samples)]
            else:
                drawn = [[int(i) for i in c[:h]] for c in candidates[it]]
            scored = []
            for j, seq in enumerate(drawn):
                value, cut = value_and_cut(self.step, self.score, obs, [self.actions[i] for i in seq])
                scored.append((value, cut, j))
            order = sorted(range(len(scored)), key=lambda j: scored[j][0])  # stable, by value
            top_value, top_cut, top = scored[order[0]]
            if top_value < best_value:
                best_value, best_prefix = top_value, [self.actions[i] for i in drawn[top][:top_cut]]
            elites = [drawn[j] for j in order[: self.elites]]
            new_probs = []
            for t in range(h):
                counts = [0.0] * n
                for seq in elites:
                    counts[seq[t]] += 1.0
                new_probs.append([(1.0 - self.smoothing) * (c / len(elites)) + self.smoothing * uniform[a]
                                  for a, c in enumerate(counts)])
            probs = new_probs
            trace.append({"candidates": drawn, "values": [s[0] for s in scored], "cuts": [s[1] for s in scored],
                          "order": order, "probs": [list(p) for p in probs], "best_value": best_value,
                          "best_length": len(best_prefix)})
        return best_prefix, {"iterations": trace}


def make_planner(kind: str, step: Step, score: Score, actions: Sequence[Any], *, seed: int | None = None,
                 **sizes: Any) -> RandomShooting | CEM:
    """``kind`` "random-shooting" or "cem" with its sizes (candidates, horizon; iterations, samples, elites, smoothing)."""
    if kind == "random-shooting":
        return RandomShooting(step, score, actions, seed=seed,
                              **{k: v for k, v in sizes.items() if k in ("candidates", "horizon")})
    if kind == "cem":
        return CEM(step, score, actions, seed=seed, **{k: v for k, v in sizes.items()
                                                       if k in ("iterations", "samples", "elites", "smoothing",
                                                                "horizon")})
    raise ValueError(f"unknown planner {kind!r}")


def oracle_dynamics(task: str, frame_skip: int = 1) -> Step:
    """The dm_control oracle as the planner's per-call dynamics (the state rebuilt from the observation)."""
    return R.dm_control_oracle(task, frame_skip)[0]


def model_dynamics(path: str) -> tuple[Step, list[tuple[float, ...]], dict[str, Any]]:
    """(batch-of-1 torch step, the checkpoint's action set, its meta) of an adapter ``.pt``."""
    model, actions, meta = R.load_adapter(path)
    return R.adapter_step(model), actions, meta


def _make_env(task: str, random_seed: int) -> Any:
    import os

    os.environ.setdefault("MUJOCO_GL", "disable")
    from dm_control import suite

    domain, name = R.TASKS[task]
    # No time limit: the episode's horizon ends it (dm_control would silently reset after its limit).
    return suite.load(domain_name=domain, task_name=name,
                      task_kwargs={"random": random_seed, "time_limit": float("inf")})


def env_at(task: str, obs: Sequence[float], random_seed: int = 0) -> Any:
    """A dm_control env (no time limit) reset, then put in the state that produced ``obs`` (``reference.write_state``)."""
    env = _make_env(task, random_seed)
    env.reset()  # initialize_episode sets task parameters the reward reads (reacher-easy's target size)
    R.write_state(task, env.physics, obs)
    return env


def run_episode(task: str, env: Any, obs: Sequence[float], planner: RandomShooting | CEM, *, horizon: int = 500,
                frame_skip: int = 1, candidates: Callable[[int], Any] | None = None) -> dict[str, Any]:
    """One episode from ``obs`` (the env's current observation): {success, steps, plan_calls, planning_latencies_ms}.

    The planner is called with the steps left, its prefix executed open loop
    with the task's reward compared with the threshold after every env step.
    ``candidates(i)`` gives the i-th plan call's candidate sequences instead
    of the planner's draws.
    """
    threshold = SUCCESS_THRESHOLDS[task]
    obs = tuple(float(x) for x in obs)
    steps, success, latencies = 0, False, []
    while steps < horizon and not success:
        given = None if candidates is None else candidates(len(latencies))
        t0 = time.perf_counter()
        prefix, _ = planner.plan(obs, horizon - steps, candidates=given)
        latencies.append(1000.0 * (time.perf_counter() - t0))
        if not prefix:
            break
        for action in prefix:
            ctrl = np.asarray(action, dtype=np.float32)
            reward = 0.0
            for _ in range(frame_skip):
                ts = env.step(ctrl)
                reward += float(ts.reward or 0.0)
            obs = R.flatten_observation(ts.observation)
            steps += 1
            if reward / frame_skip >= threshold:
                success = True
                break
            if steps >= horizon:
                break
    return {"success": success, "steps": steps, "plan_calls": len(latencies), "planning_latencies_ms": latencies}


def run_episodes(task: str, planner: RandomShooting | CEM, episodes: int, *, seed: int = 0, horizon: int = 500,
                 frame_skip: int = 1, first_episode: int = 0) -> list[dict[str, Any]]:
    """Episodes ``first_episode .. first_episode + episodes - 1`` of base seed ``seed`` (see :func:`run_episode`).

    Episode k starts from dm_control's reset with ``task_kwargs={"random": seed * SEED_STRIDE + k}``.
    """
    results = []
    for k in range(first_episode, first_episode + episodes):
        env = _make_env(task, seed * SEED_STRIDE + k)
        obs = R.flatten_observation(env.reset().observation)
        results.append(run_episode(task, env, obs, planner, horizon=horizon, frame_skip=frame_skip))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m wmel_jax.benchmarks.reference_planner``: both arms of one model, per call."""
    from wmel_jax.errors import EXIT_USAGE, WmelError
    from wmel_jax.fileio import check_writable, write_json

    p = argparse.ArgumentParser(prog="python -m wmel_jax.benchmarks.reference_planner",
                                description="CPG by the per-call reference planner (dm_control + torch batch-of-1).")
    p.add_argument("model", nargs="?", help="adapter-schema torch checkpoint (.pt); needed for the learned arm")
    p.add_argument("--env", required=True, choices=sorted(SUCCESS_THRESHOLDS))
    p.add_argument("--planner", default="random-shooting", choices=("random-shooting", "cem"))
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--horizon", type=int, default=500)
    p.add_argument("--frame-skip", type=int, default=1)
    p.add_argument("--arms", default="oracle,learned")
    p.add_argument("--torch-threads", type=int, default=1)
    p.add_argument("-o", "--output")
    args = p.parse_args(argv)
    try:
        arms = [a.strip() for a in args.arms.split(",") if a.strip()]
        if not arms or any(a not in ("oracle", "learned") for a in arms):
            raise WmelError(f"--arms takes oracle and/or learned; got {args.arms!r}")
        if "learned" in arms and not args.model:
            raise WmelError("the learned arm needs a MODEL.pt")
        if args.output:
            check_writable(args.output)
        import torch

        torch.set_num_threads(args.torch_threads)
        out: dict[str, Any] = {"environment": f"dmc_{args.env.replace('-', '_')}", "planner": args.planner,
                               "seed": args.seed, "episodes": args.episodes, "horizon": args.horizon}
        score = R.task_score(args.env)
        for arm in arms:
            if arm == "oracle":
                step, actions = oracle_dynamics(args.env, args.frame_skip), R.default_actions(args.env)
            else:
                step, actions, _ = model_dynamics(args.model)
            planner = make_planner(args.planner, step, score, actions, seed=args.seed)
            t0 = time.perf_counter()
            results = run_episodes(args.env, planner, args.episodes, seed=args.seed, horizon=args.horizon,
                                   frame_skip=args.frame_skip)
            wall = time.perf_counter() - t0
            calls = sum(r["plan_calls"] for r in results)
            out[arm] = {"results": results, "wall_s": wall, "plan_calls": calls,
                        "success_rate": sum(r["success"] for r in results) / len(results)}
            print(f"{arm}: success {out[arm]['success_rate']:.3f} (n={len(results)}), {calls} plan calls, "
                  f"{wall:.1f} s ({1000 * wall / max(calls, 1):.1f} ms per call)")
        if args.output:
            write_json(args.output, out)
    except WmelError as e:
        print(f"reference_planner: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
