"""torch -> flax conversion of TD-MPC2 checkpoints (needs the `convert` extra)."""
