"""Downstream planning: the Counterfactual Planning Gap (SPEC section 9) as batched kernels.

- :mod:`~wmel_jax.planning.planners`: random shooting and CEM, pure functions over a batch of episodes;
- :mod:`~wmel_jax.planning.episodes`: many episodes as one kernel (plan rounds in ``lax``, finished
  episodes masked, free slots refilled from the queue);
- :mod:`~wmel_jax.planning.stats`: the gap, its intervals and verdict, the paired analyses;
- :mod:`~wmel_jax.planning.cpg`: the two arms, :func:`run_cpg` and the CPG JSON.
"""
