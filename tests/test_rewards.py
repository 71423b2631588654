"""``wmel_jax.oracle.rewards.tolerance`` against dm_control's own, and by hand.

The task rewards built on it are checked against dm_control's ``env.step``
in ``tests/test_oracle.py`` (test_rewards_match_dm_control).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest
from dm_control.utils import rewards as dm_rewards

from wmel_jax.oracle.rewards import tolerance

#: float64 agreement with dm_control's numpy tolerance()
TOLERANCE_TOL = 1e-15

# The calls the three tasks make (cartpole centered / small_control / small_velocity,
# reacher's indicator, acrobot's distance), plus an asymmetric interval.
CASES = [
    dict(margin=2),
    dict(margin=1, value_at_margin=0, sigmoid="quadratic"),
    dict(margin=5),
    dict(bounds=(0, 0.06)),
    dict(bounds=(0, 0.2), margin=1),
    dict(bounds=(-0.5, 1.5), margin=0.3, value_at_margin=0.4, sigmoid="quadratic"),
]


@pytest.mark.parametrize("kwargs", CASES, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()))
def test_tolerance_matches_dm_control(kwargs):
    x = np.concatenate([np.linspace(-12, 12, 4001), [0.0, 0.06, 0.2, 1.5, -0.5, 1.0, -1.0, 2.0, -2.0]])
    ours = np.asarray(tolerance(jnp.asarray(x, jnp.float64), **kwargs))
    ref = dm_rewards.tolerance(x, **kwargs)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=TOLERANCE_TOL)


def test_tolerance_by_hand():
    # gaussian: value_at_margin (0.1) exactly one margin out; 1 inside the bounds.
    assert float(tolerance(jnp.float64(2.0), margin=2)) == pytest.approx(0.1, abs=1e-15)
    assert float(tolerance(jnp.float64(-2.0), margin=2)) == pytest.approx(0.1, abs=1e-15)
    assert float(tolerance(jnp.float64(0.0), margin=2)) == 1.0
    # half a margin out: exp(-0.5 * (0.5 * sqrt(-2 ln 0.1))^2) = 0.1 ** 0.25
    assert float(tolerance(jnp.float64(1.0), margin=2)) == pytest.approx(0.1**0.25, abs=1e-15)
    # quadratic with value 0 at the margin (cartpole's small_control): 1 - a^2 inside |a| < 1, else 0.
    for a, want in ((0.0, 1.0), (0.5, 0.75), (-0.5, 0.75), (1.0, 0.0), (1.5, 0.0)):
        got = float(tolerance(jnp.float64(a), margin=1, value_at_margin=0, sigmoid="quadratic"))
        assert got == pytest.approx(want, abs=1e-15), a
    # margin 0: a hard indicator of the closed interval.
    assert [float(tolerance(jnp.float64(v), (0.0, 0.06))) for v in (0.0, 0.06, 0.0600001, -1e-9)] == [1, 1, 0, 0]
    # acrobot: the tip 1.2 from the target centre, 1.0 outside its 0.2 radius: 0.1.
    assert float(tolerance(jnp.float64(1.2), (0.0, 0.2), margin=1)) == pytest.approx(0.1, abs=1e-15)
    assert math.isclose(float(tolerance(jnp.float32(1.0), margin=2)), 0.1**0.25, rel_tol=1e-6)


def test_tolerance_rejects_what_dm_control_rejects():
    with pytest.raises(ValueError, match="lower bound"):
        tolerance(jnp.zeros(3), bounds=(1.0, 0.0))
    with pytest.raises(ValueError, match="margin"):
        tolerance(jnp.zeros(3), margin=-1.0)
    with pytest.raises(ValueError, match="not implemented"):
        tolerance(jnp.zeros(3), margin=1.0, sigmoid="hyperbolic")
