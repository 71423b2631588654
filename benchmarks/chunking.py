"""Chunked physics batches: equal chunks against full chunks plus a padded remainder.

    python -m wmel_jax.benchmarks.chunking            # cartpole-swingup step, N = 5,000 and 8,192, 7 runs

On CPU the oracle's kernels run big batches in chunks of at most 4,096 states
(:func:`wmel_jax.oracle.base.batch_chunk`). :func:`~wmel_jax.oracle.base.map_chunks`
cuts N states into the fewest chunks of EQUAL size (5,000: two of 2,500); the
previous cut (full chunks, the last padded to full size: 5,000 -> 2 x 4,096)
computed up to twice the states. Both cuts are timed in one process on the same
states (``Oracle.step``, float64, median of ``--runs`` calls after the compiling
one); 8,192 (two full chunks either way) is the control. Prints the medians; on
the shared 2-core machine the ratio is what counts.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


def _full_chunks(fn, xs, chunk):
    """The previous cut: full chunks, the last one padded to full size."""
    import jax
    import jax.numpy as jnp

    n = jax.tree_util.tree_leaves(xs)[0].shape[0]
    if chunk is None or n <= chunk:
        return fn(*xs)
    n_chunks = -(-n // chunk)
    pad = n_chunks * chunk - n

    def split(x):
        if pad:
            x = jnp.concatenate([x, jnp.broadcast_to(x[:1], (pad,) + x.shape[1:])])
        return x.reshape((n_chunks, chunk) + x.shape[1:])

    out = jax.lax.map(lambda c: fn(*c), jax.tree_util.tree_map(split, xs))
    return jax.tree_util.tree_map(lambda y: y.reshape((n_chunks * chunk,) + y.shape[2:])[:n], out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="cartpole-swingup")
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 8192])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args(argv)
    os.environ.setdefault("MUJOCO_GL", "disable")
    import jax
    import numpy as np

    jax.config.update("jax_enable_x64", True)
    from wmel_jax.oracle import base, task_class

    equal_chunks = base.map_chunks
    for n in args.sizes:
        times = {}
        for name, cut in (("equal", equal_chunks), ("full+padded", _full_chunks)):
            base.map_chunks = cut
            oracle = base.Oracle(task_class(args.task), 1, "float64")  # fresh kernels for this cut
            states = np.asarray(oracle.reset(jax.random.key(0), n))
            actions = np.tile(oracle.actions[:1], (n, 1))
            jax.block_until_ready(oracle.step(states, actions))
            runs = []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                jax.block_until_ready(oracle.step(states, actions))
                runs.append(time.perf_counter() - t0)
            times[name] = statistics.median(runs)
        base.map_chunks = equal_chunks
        print(f"{args.task} step, N = {n}: equal chunks {times['equal'] * 1e3:.1f} ms, "
              f"full + padded chunks {times['full+padded'] * 1e3:.1f} ms "
              f"({times['full+padded'] / times['equal']:.2f}x)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
