"""Bounds on every number a user or a file gives wmel-jax, in one place.

A number past its bound would not be a mistake wmel-jax can compute through:
a frame skip of 1e9 traces forever, 1e9 states exhaust the memory before the
first kernel runs, a seed past 2**64 overflows. Each bound is generous (far
beyond any real use, stated beside it) and is checked where the number enters
(the command line, a model file's header, a file of states or actions), with a
one-line :class:`WmelError` naming it.
"""

from __future__ import annotations

import numbers
from typing import Any

from wmel_jax.errors import WmelError

__all__ = [
    "MAX_N_STATES",
    "MAX_K_STEPS",
    "MAX_CHUNK_STATES",
    "MAX_FRAME_SKIP",
    "MAX_ACTIONS",
    "MAX_SEED",
    "MAX_ORACLE_ROWS",
    "MAX_MODEL_BYTES",
    "MAX_HEADER_BYTES",
    "MAX_ARCH_DIM",
    "check_count",
    "check_seed",
    "check_problem_size",
    "check_run_numbers",
]

#: States per evaluation: ten times the 100,000 the benchmarks run (about 1 GB there).
MAX_N_STATES = 1_000_000
#: M2's horizon; TD-MPC2 plans 3 to 5 steps ahead and the reference uses 10.
MAX_K_STEPS = 1_000
#: States per kernel call (default 4,096): bigger chunks only cost memory.
MAX_CHUNK_STATES = 65_536
#: Env steps per model step (action repeat); TD-MPC2 uses 2 on DMC, 100 is 1 s of cartpole.
MAX_FRAME_SKIP = 100
#: Actions in a discrete action set (reacher's default has 9); M3 is O(A^2) per state.
MAX_ACTIONS = 256
#: Seeds are JAX PRNG seeds: a signed 64-bit integer, non-negative here.
MAX_SEED = 2**63 - 1
#: Rows of the oracle's answers kept on the host: N x A successors and k x N
#: trajectory points (20 million rows of a 6-wide observation: about 1 GB).
MAX_ORACLE_ROWS = 20_000_000
#: Parameter bytes a model file may declare: the largest TD-MPC2 model (317M
#: parameters) is 1.3 GB in float32.
MAX_MODEL_BYTES = 4 * 2**30
#: A model file's JSON header (the tensor table and wmel-jax's own header: a few KB).
MAX_HEADER_BYTES = 16 * 2**20
#: Any one width of a model's architecture (the largest TD-MPC2 layer is 4,096).
MAX_ARCH_DIM = 2**20


def check_count(value: Any, name: str, maximum: int) -> int:
    """A positive int (numpy ints too; not bools, not floats) of at most ``maximum``, or WmelError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise WmelError(f"{name} must be a positive int; got {value!r}")
    if value > maximum:
        raise WmelError(f"{name} must be a positive int of at most {maximum:,}; got {int(value):,}")
    return int(value)


def check_seed(value: Any, name: str = "seed") -> int:
    """A seed: an int from 0 to 2**63 - 1, or WmelError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= value <= MAX_SEED:
        raise WmelError(f"{name} must be an int from 0 to 2**63 - 1; got {value!r}")
    return int(value)


def check_problem_size(n_states: int, n_actions: int, k_steps: int) -> None:
    """WmelError when the oracle's answers for N states, A actions and k steps would not fit a bound."""
    check_count(n_states, "n_states (--n-states, or the rows of --states)", MAX_N_STATES)
    check_count(n_actions, "the number of actions (the action set's rows)", MAX_ACTIONS)
    check_count(k_steps, "k_steps (--k-steps, or the rows of --action-sequence)", MAX_K_STEPS)
    for rows, what in ((n_states * n_actions, "states x actions"), (n_states * k_steps, "states x steps")):
        if rows > MAX_ORACLE_ROWS:
            raise WmelError(
                f"{n_states:,} states with {n_actions} actions and {k_steps} steps: {what} = {rows:,} oracle "
                f"answers, more than the {MAX_ORACLE_ROWS:,} wmel-jax keeps in memory; evaluate fewer states"
            )


def check_run_numbers(*, n_states: Any = None, k_steps: Any = None, seed: Any = None,
                      chunk_states: Any = None) -> None:
    """The numbers of a run's options (None: not given), bounded before any work."""
    if n_states is not None:
        check_count(n_states, "n_states (--n-states)", MAX_N_STATES)
    if k_steps is not None:
        check_count(k_steps, "k_steps (--k-steps)", MAX_K_STEPS)
    if seed is not None:
        check_seed(seed, "seed (--seed)")
    if chunk_states is not None:
        check_count(chunk_states, "chunk size (--chunk-states)", MAX_CHUNK_STATES)
