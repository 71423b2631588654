"""Shared MJX machinery for the task oracles: models, batched physics, the Oracle.

One oracle step, batched over N states in one jit kernel::

    obs (N, obs_dim) --task.qpos_qvel_from_obs--> mjx.Data (qpos, qvel), ctrl = action
        --forward (kinematics at obs' qpos: task.aux_from_obs, e.g. reacher's target)
        --integrate, then (forward, integrate) x (frame_skip - 1)
        --kinematics--> task.obs_from_data --> next_obs (N, obs_dim)
    reward (N,) = sum over the frame_skip physics steps of task.reward on the
        state after the step (its kinematics from the next forward pass, the
        last from the final kinematics), as dm_control computes it per env.step

The physics is MuJoCo's, stage by stage from MJX (``fwd_position``,
``fwd_velocity``, ``fwd_actuation``, ``fwd_acceleration``, the constraint
solve, ``euler`` / RK4) on dm_control's own task model. It is arranged at
the level of the whole batch instead of ``vmap(mjx.step)``, for speed only:

* the constraint solve. Cartpole's slider and reacher's wrist are limited
  joints, so MuJoCo builds one constraint row while the joint is at its
  limit; MJX always carries the row (zeroed when inactive) and, under vmap,
  runs its Newton solver (a while loop around a 50-step line-search scan)
  on every state for as long as any one state needs it. With a single
  inequality row the problem MuJoCo's solvers minimise has a closed-form
  minimiser, computed here for all states at once (``_solve_single_row``);
  models with other constraints use MJX's solver, skipped when no state in
  the batch has a constraint in play (``_solve_mjx``);
* the mass matrix of these small models (2 dofs) is factored and solved
  with an elementwise Cholesky (:func:`cholesky_upper`) where MJX calls
  LAPACK once per state (``factor_m``, ``solve_m``, ``euler``); the rest of
  ``fwd_position`` / ``fwd_acceleration`` / ``euler`` is MJX's, stage by stage;
* RK4 (cartpole, acrobot) is MuJoCo's 4-stage tableau written at batch
  level so that each stage's forward pass gets the same treatment;
* on CPU, XLA's YNNPACK fusions are switched off for these kernels
  (:func:`compiler_options`) and big batches run in 4,096-state chunks
  (:func:`batch_chunk`).

Models outside these cases (more constraint rows, more dofs, other joints)
take MJX's own stages (``solver="mjx"``, ``factor="lapack"``), which the
tests also run against dm_control.

Observations are read after the step with kinematics refreshed, as
dm_control's ``Physics.step`` ends with ``mj_step1`` (position stage); in
rollouts the next step's forward pass provides them.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import threading
from pathlib import Path
from typing import Any, ClassVar, Iterator, Literal

import jax
import jax.numpy as jnp
import mujoco
import numpy as np

from wmel_jax.errors import WmelError


class _LazyMjx:
    """``mujoco.mjx``, imported on first use (it is only needed to trace the physics)."""

    def __getattr__(self, name: str):
        from wmel_jax.oracle._mjx import mjx as module

        return getattr(module, name)


mjx = _LazyMjx()

__all__ = [
    "PRECISIONS",
    "DEFAULT_PRECISION",
    "Precision",
    "TaskDef",
    "Oracle",
    "Physics",
    "precision_scope",
    "check_precision",
    "dm_control_suite_dir",
    "compiler_options",
    "batch_chunk",
    "cholesky_upper",
    "cholesky_solve_upper",
    "map_chunks",
]

Precision = Literal["float32", "float64"]
PRECISIONS: tuple[str, ...] = ("float32", "float64")
#: float64: on 10,000 sampled states per task a float32 oracle orders the
#: action set differently from a float64 one on 2.8% of cartpole states (ties:
#: one step moves cos(theta) below float32 resolution), 0.14% of acrobot's,
#: 0.01% of reacher's (benchmarks/results/oracle_precision.json), noise that
#: would enter M3 by itself; float64 costs only 1.2-1.3x on CPU. float32 stays
#: available (GPUs, x64 off).
DEFAULT_PRECISION: Precision = "float64"

_DTYPES = {"float32": np.float32, "float64": np.float64}


# ----------------------------------------------------------------------------
# precision
# ----------------------------------------------------------------------------


def check_precision(precision: Any) -> Precision:
    if precision not in PRECISIONS:
        raise WmelError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    return precision


@contextlib.contextmanager
def precision_scope(precision: Precision) -> Iterator[None]:
    """Run JAX in the oracle's precision.

    float32 traces and runs with 64-bit JAX switched off (thread-locally) so
    that every array MJX creates internally is float32 too, whatever the global
    setting. float64 needs ``jax_enable_x64``; without it JAX would silently
    compute in float32, so that is an error instead.
    """
    if precision == "float32":
        with jax.enable_x64(False):
            yield
    else:
        if not jax.config.jax_enable_x64:
            raise WmelError(
                "the float64 oracle needs 64-bit JAX: call "
                "jax.config.update('jax_enable_x64', True) (or set JAX_ENABLE_X64=1) "
                "before using it, or pass precision='float32'"
            )
        yield


# ----------------------------------------------------------------------------
# dm_control's task models
# ----------------------------------------------------------------------------


def dm_control_suite_dir() -> Path:
    """dm_control's ``suite/`` folder, found without importing dm_control."""
    spec = importlib.util.find_spec("dm_control")
    if spec is None or not spec.submodule_search_locations:
        raise WmelError("dm_control is not installed; the oracle reads its task models (pip install dm-control==1.0.50)")
    return Path(next(iter(spec.submodule_search_locations))) / "suite"


@functools.lru_cache(maxsize=None)
def load_mj_model(xml_file: str):
    """dm_control's task MJCF as an ``mujoco.MjModel``, made MJX-compatible.

    The only change is clearing the energy flag: MJX rejects it and it only
    enables energy bookkeeping (``mjData.energy``), never the dynamics.
    The returned model is shared: do not modify it.
    """
    import mujoco

    path = dm_control_suite_dir() / xml_file
    if not path.is_file():
        raise WmelError(f"dm_control task model {str(path)!r} not found")
    model = mujoco.MjModel.from_xml_path(str(path))  # ./common/*.xml resolve beside it
    model.opt.enableflags &= ~int(mujoco.mjtEnableBit.mjENBL_ENERGY)
    return model


# ----------------------------------------------------------------------------
# task definitions
# ----------------------------------------------------------------------------


class TaskDef:
    """One DMC task: observation <-> physics state, score, reset, action set.

    Subclasses are frozen dataclasses holding only static facts (python ints
    and floats read from the model, e.g. body ids), built by
    :meth:`from_model`. Every method works on ONE state (no batch axis); the
    oracle vmaps them. ``aux`` is per-state data the observation needs that is
    not physics state (reacher's target position); ``aux_dim == 0`` if none.
    """

    name: ClassVar[str]
    xml_file: ClassVar[str]  # file in dm_control/suite/
    obs_dim: ClassVar[int]
    action_dim: ClassVar[int]
    aux_dim: ClassVar[int] = 0
    #: (name, low, high) of each observation component: generous physical bounds
    #: (far beyond what the task reaches) outside which a given state is refused
    #: as not a state of this task (a value of 1e300 would overflow the model).
    obs_limits: ClassVar[tuple[tuple[str, float, float], ...]] = ()

    @classmethod
    def from_model(cls, model) -> "TaskDef":
        raise NotImplementedError

    def default_actions(self) -> np.ndarray:
        """The default discrete action set, (A, action_dim) float64."""
        raise NotImplementedError

    def qpos_qvel_from_obs(self, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        """obs (obs_dim,) -> qpos (nq,), qvel (nv,)."""
        raise NotImplementedError

    def aux_from_obs(self, obs: jax.Array, data) -> jax.Array:
        """obs (obs_dim,), data with kinematics at that qpos -> aux (aux_dim,)."""
        return jnp.zeros((0,), obs.dtype)

    def obs_from_data(self, data, aux: jax.Array) -> jax.Array:
        """mjx.Data with kinematics up to date, aux (aux_dim,) -> obs (obs_dim,)."""
        raise NotImplementedError

    def score(self, obs: jax.Array) -> jax.Array:
        """The M3 score of one observation (lower is better), a scalar."""
        raise NotImplementedError

    def reward(self, data, aux: jax.Array) -> jax.Array:
        """dm_control's task reward of one state, a scalar.

        ``data``: mjx.Data with kinematics current (the state after a physics
        step) and ``ctrl`` the action being held; ``aux`` (aux_dim,). dm_control
        computes the reward once per ``env.step``, after the physics step;
        :meth:`Physics.hold_reward` sums it over the action repeat.
        """
        raise NotImplementedError

    def reset(self, key: jax.Array, dtype) -> tuple[jax.Array, jax.Array, jax.Array]:
        """dm_control's ``initialize_episode`` distribution: key -> qpos, qvel, aux."""
        raise NotImplementedError


# ----------------------------------------------------------------------------
# batched physics
# ----------------------------------------------------------------------------

#: Models with a dense mass matrix of at most this many dofs factor it with the
#: elementwise Cholesky below instead of LAPACK (see Physics._small_dense).
SMALL_NV = 6


def cholesky_upper(a: jax.Array) -> jax.Array:
    """Upper Cholesky factor U (a = U' U) of one small SPD matrix (nv, nv), written out elementwise.

    The same factor ``jax.scipy.linalg.cho_factor`` returns (MJX's dense
    ``qLD``), without a LAPACK call: under vmap these become a few fused
    elementwise ops over the batch, where batched LAPACK on CPU runs one tiny
    factorisation at a time. nv is static and at most SMALL_NV.
    """
    n = a.shape[-1]
    u = [[jnp.zeros((), a.dtype)] * n for _ in range(n)]
    for j in range(n):
        u[j][j] = jnp.sqrt(a[j, j] - sum((u[k][j] * u[k][j] for k in range(j)), jnp.zeros((), a.dtype)))
        for i in range(j + 1, n):
            u[j][i] = (a[j, i] - sum((u[k][j] * u[k][i] for k in range(j)), jnp.zeros((), a.dtype))) / u[j][j]
    return jnp.stack([jnp.stack(row) for row in u])


def cholesky_solve_upper(u: jax.Array, b: jax.Array) -> jax.Array:
    """Solve U' U x = b for one small upper factor U (nv, nv) and b (nv,), elementwise."""
    n = u.shape[-1]
    y = []
    for i in range(n):  # U' y = b (forward)
        y.append((b[i] - sum((u[k, i] * y[k] for k in range(i)), jnp.zeros((), b.dtype))) / u[i, i])
    x = [None] * n
    for i in reversed(range(n)):  # U x = y (backward)
        x[i] = (y[i] - sum((u[i, k] * x[k] for k in range(i + 1, n)), jnp.zeros((), b.dtype))) / u[i, i]
    return jnp.stack(x)



class Physics:
    """Batched MJX physics for one task model at one precision.

    All methods take and return ``mjx.Data`` with a leading batch axis and must
    run under :func:`precision_scope` (they are traced inside the oracle's
    jitted kernels). Holds the mjx.Model; build with :func:`physics_for`.
    """

    #: What :meth:`_build` sets: MJX's model and everything read from it.
    _BUILT = frozenset({"model", "template", "solver", "factor", "_has_constraints", "_integrator", "_small_dense",
                        "_smooth_state", "_kinematics_state"})

    def __init__(self, task: TaskDef, mj_model, precision: Precision, solver: str | None = None, factor: str | None = None):
        self.task = task
        self.precision = precision
        self.dtype = _DTYPES[precision]
        self._mj_model = mj_model
        self._requested = (solver, factor)
        self._build_lock = threading.Lock()
        # The MuJoCo model by content (sha256 of its binary MJB form), as put
        # on the device: every number of it is baked into traced programs.
        buffer = np.empty(mujoco.mj_sizeModel(mj_model), np.uint8)
        mujoco.mj_saveModel(mj_model, None, buffer)
        self._model_sha256 = hashlib.sha256(buffer.tobytes()).hexdigest()
        # MJX (its import and the mjx.Model) is needed only to trace: a run whose
        # kernels are all read from the cache never builds it (see __getattr__).
        # A path asked for by name is checked against the model now.
        if solver is not None or factor is not None:
            self._build()

    def __getattr__(self, name: str):
        # Only for attributes not set yet: the MJX side, built on first use.
        if name in Physics._BUILT:
            self._build()
            return object.__getattribute__(self, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _build(self) -> None:
        """Put the model on the device with MJX and pick the solver and factor paths (once, thread-safe)."""
        with self._build_lock:
            if "model" in self.__dict__:
                return
            # Built where it is first needed, possibly inside a trace: the model's
            # arrays are concrete constants, in the physics' own precision.
            with jax.ensure_compile_time_eval(), precision_scope(self.precision):
                self._build_mjx()

    def _build_mjx(self) -> None:
        from wmel_jax.oracle._mjx import mjx

        task, mj_model, (solver, factor) = self.task, self._mj_model, self._requested
        # This process's own device: MJX's default, jax.devices()[0], belongs to process 0
        # in a run of several processes (the arrays are constants of the kernels anyway).
        device = jax.local_devices()[0]
        model = mjx.put_model(mj_model, device=device)
        template = mjx.make_data(model, device=device)
        m = model
        efc_type = np.asarray(template._impl.efc_type)
        has_constraints = efc_type.size > 0
        single_limit = efc_type.size == 1 and int(efc_type[0]) in (
            int(mjx.ConstraintType.LIMIT_JOINT),
            int(mjx.ConstraintType.LIMIT_TENDON),
        )
        if solver is None:
            solver = "single_row" if single_limit else "mjx"
        if solver not in ("single_row", "mjx") or (solver == "single_row" and not single_limit):
            raise ValueError(f"{task.name}: solver {solver!r} does not apply to this model")
        integrator = int(m.opt.integrator)
        if integrator not in (int(mjx.IntegratorType.EULER), int(mjx.IntegratorType.RK4)):
            raise NotImplementedError(f"{task.name}: integrator {integrator} not supported by the oracle")
        slide_hinge = np.isin(np.asarray(m.jnt_type), (int(mjx.JointType.SLIDE), int(mjx.JointType.HINGE))).all()
        if integrator == int(mjx.IntegratorType.RK4) and (not slide_hinge or m.na):
            # The batch RK4 below integrates positions as qpos + dt * qvel.
            raise NotImplementedError(f"{task.name}: batch RK4 supports slide/hinge joints without activations")
        small = (not mjx.is_sparse(m)) and m.nv <= SMALL_NV and slide_hinge and not m.na
        if factor is None:
            factor = "elementwise" if small else "lapack"
        if factor not in ("elementwise", "lapack") or (factor == "elementwise" and not small):
            raise ValueError(f"{task.name}: factor {factor!r} does not apply to this model")
        self.template = template
        self._has_constraints = has_constraints
        #: "single_row": the exact one-limit-row solve; "mjx": MJX's solver (any model).
        self.solver = solver
        self._integrator = integrator
        #: "elementwise": a small dense model factors and solves with M via
        #: cholesky_upper (Euler written out for slide/hinge joints without
        #: activations); "lapack": MJX's own stages (any model).
        self.factor = factor
        self._small_dense = factor == "elementwise"
        # MJX's per-state stages, jitted once per Physics and called under vmap:
        # a jitted function under vmap is traced at per-state shapes, so every
        # call site (the sampler's scan, the oracle's step and rollout, each RK4
        # stage) and every batch size reuses one trace instead of re-running
        # MJX's Python: the evaluation's oracle kernel traces 2.5x faster for
        # cartpole and acrobot, 1.6x for reacher, the sampler 2-3x
        # (benchmarks/codegen.py). XLA inlines the calls: the results are
        # bit-identical to the stages traced in place (checked on all tasks).
        self._smooth_state = jax.jit(self._smooth_small_state if self._small_dense else self._smooth_general_state)
        self._kinematics_state = jax.jit(functools.partial(mjx.kinematics, model))
        self.model = model  # last: its presence says the build is complete

    def __wmel_cache_key__(self) -> tuple:
        """What programs traced with this physics depend on besides the code (see wmel_jax.kernel_cache).

        The solver and factor paths as asked for (None: the fastest exact ones
        for the model): the paths picked follow from them, the model's content
        and the code, all in the key, so the key needs no MJX.
        """
        return (self.task, self.precision, *self._requested, self._model_sha256)

    # -- state construction ------------------------------------------------

    def data(self, qpos: jax.Array, qvel: jax.Array):
        """qpos (N, nq), qvel (N, nv) -> mjx.Data batch (fresh, as mj_resetData + set state)."""
        return jax.vmap(lambda qp, qv: self.template.replace(qpos=qp, qvel=qv))(qpos, qvel)

    def kinematics(self, d):
        return jax.vmap(self._kinematics_state)(d)

    def state(self, obs: jax.Array):
        """obs (N, obs_dim) -> Data batch holding the physics state (qpos, qvel), nothing computed."""
        qpos, qvel = jax.vmap(self.task.qpos_qvel_from_obs)(obs)
        return self.data(qpos, qvel)

    def aux(self, obs: jax.Array, d) -> jax.Array:
        """obs (N, obs_dim), Data with kinematics at the obs' qpos -> aux (N, aux_dim)."""
        if self.task.aux_dim:
            return jax.vmap(self.task.aux_from_obs)(obs, d)
        return jnp.zeros((obs.shape[0], 0), obs.dtype)

    def observe(self, d, aux: jax.Array) -> jax.Array:
        """Data batch with kinematics current, aux -> obs (N, obs_dim)."""
        return jax.vmap(self.task.obs_from_data)(d, aux)

    def reward(self, d, aux: jax.Array) -> jax.Array:
        """Data batch with kinematics current (ctrl the held action), aux -> task reward (N,)."""
        return jax.vmap(self.task.reward)(d, aux)

    def reset(self, keys: jax.Array):
        """keys (N,) -> (Data batch with kinematics, aux) from the task's reset distribution."""
        qpos, qvel, aux = jax.vmap(lambda k: self.task.reset(k, self.dtype))(keys)
        return self.kinematics(self.data(qpos, qvel)), aux

    # -- dynamics ------------------------------------------------------------

    def _smooth(self, d):
        """Everything of mj_forward before the constraint solver, per state."""
        return jax.vmap(self._smooth_state)(d)

    def _smooth_general_state(self, x):
        m = self.model
        x = mjx.fwd_position(m, x)
        x = mjx.sensor_pos(m, x)
        x = mjx.fwd_velocity(m, x)
        x = mjx.sensor_vel(m, x)
        x = mjx.fwd_actuation(m, x)
        return mjx.fwd_acceleration(m, x)

    def _smooth_small_state(self, x):
        # mjx.fwd_position's stages, with the mass matrix factored elementwise.
        m = self.model
        x = mjx.kinematics(m, x)
        x = mjx.com_pos(m, x)
        x = mjx.camlight(m, x)
        x = mjx.tendon(m, x)
        x = mjx.crb(m, x)
        x = mjx.tendon_armature(m, x)
        x = x.tree_replace({"_impl.qLD": cholesky_upper(x._impl.M)})  # = mjx.factor_m (dense)
        x = mjx.collision(m, x)
        x = mjx.make_constraint(m, x)
        x = mjx.transmission(m, x)
        x = mjx.sensor_pos(m, x)
        x = mjx.fwd_velocity(m, x)
        x = mjx.sensor_vel(m, x)
        x = mjx.fwd_actuation(m, x)
        # mjx.fwd_acceleration, solving with the factor above.
        qfrc_smooth = x.qfrc_passive - x.qfrc_bias + x.qfrc_actuator + x.qfrc_applied + mjx.xfrc_accumulate(m, x)
        qacc_smooth = cholesky_solve_upper(x._impl.qLD, qfrc_smooth)
        return x.replace(qfrc_smooth=qfrc_smooth, qacc_smooth=qacc_smooth)

    def _solve(self, d):
        """The constraint solve of mj_forward for a batch whose smooth dynamics are done."""
        if self.solver == "single_row":
            return self._solve_single_row(d)
        return self._solve_mjx(d)

    def _solve_single_row(self, d):
        """Exact solution of MuJoCo's constraint problem when it has one inequality row.

        MuJoCo's solvers minimise, over qacc,
            0.5 (qacc - qacc_smooth)' M (qacc - qacc_smooth) + s(J qacc - aref),
        s(x) = 0.5 D x^2 for x < 0, else 0 (a joint-limit row; MJX zeroes J and
        aref while the joint is inside its range). The cost is strictly convex
        and its minimiser has a closed form: with r0 = J qacc_smooth - aref,
        if r0 >= 0 it is qacc_smooth (no force); else the row is active and,
        writing y = M^-1 J', the force is f = -D r0 / (1 + D J y) and
        qacc = qacc_smooth + y f (KKT: M (qacc - qacc_smooth) = J' f,
        f = -D (J qacc - aref); the residual J qacc - aref = r0 / (1 + D J y)
        keeps r0's sign, so the active guess is consistent). MuJoCo's Newton
        solver converges to this point (to rounding) in one or two iterations;
        MJX's, under vmap, would run its 50-step line-search scan for every
        state in the batch. Used for models whose only constraint row is a
        joint or tendon limit (cartpole's slider, reacher's wrist).
        """
        m = self.model
        impl = d._impl
        j = impl.efc_J[:, 0, :]  # (N, nv)
        aref, dinv = impl.efc_aref[:, 0], impl.efc_D[:, 0]  # efc_D is the row's D (1 / R)
        qs = d.qacc_smooth

        def m_inv_jt(x, jrow):  # M^-1 J' for one state
            if self._small_dense:
                return cholesky_solve_upper(x._impl.qLD, jrow)
            return jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(mjx.full_m(m, x)), jrow)

        y = jax.vmap(m_inv_jt)(d, j)  # (N, nv)
        r0 = jnp.sum(j * qs, axis=1) - aref
        force = jnp.where(r0 < 0, -dinv * r0 / (1 + dinv * jnp.sum(j * y, axis=1)), 0)
        return d.tree_replace(
            {
                "qacc": qs + y * force[:, None],
                "qfrc_constraint": j * force[:, None],
                "_impl.efc_force": force[:, None],
            }
        )

    def _solve_mjx(self, d):
        """MJX's own solver for any constraint set, run only if some state needs it.

        A state whose constraint rows all have zero Jacobian and reference
        acceleration has constant (zero) constraint cost: its answer is
        qacc_smooth with zero force, set directly (and kept even when the
        solver runs for the rest of the batch).
        """
        m = self.model
        impl = d._impl
        need = jnp.any(impl.efc_J != 0, axis=(1, 2)) | jnp.any(impl.efc_aref != 0, axis=1)
        free = d.tree_replace(
            {
                "qacc": d.qacc_smooth,
                "qfrc_constraint": jnp.zeros_like(d.qfrc_constraint),
                "_impl.efc_force": jnp.zeros_like(impl.efc_force),
            }
        )

        def solve_all(d):
            solved = jax.vmap(lambda x: mjx.solve(m, x))(d)

            def pick(a, b):
                return jnp.where(need.reshape(need.shape + (1,) * (a.ndim - 1)), a, b)

            return free.tree_replace(
                {
                    "qacc": pick(solved.qacc, free.qacc),
                    "qfrc_constraint": pick(solved.qfrc_constraint, free.qfrc_constraint),
                    "_impl.efc_force": pick(solved._impl.efc_force, free._impl.efc_force),
                }
            )

        return jax.lax.cond(jnp.any(need), solve_all, lambda d: free, d)

    def forward(self, d):
        """mj_forward for a batch: smooth dynamics, then constraints."""
        d = self._smooth(d)
        if not self._has_constraints:
            return d.replace(qacc=d.qacc_smooth)
        d = self._solve(d)
        return jax.vmap(lambda x: mjx.sensor_acc(self.model, x))(d)

    def _rk4(self, d0):
        """MuJoCo's RK4 (explicit, 4 stages) for a batch whose forward is done.

        Stage i evaluates the forward dynamics at qpos0 + dt * a_i * v_{i-1},
        qvel0 + dt * a_i * acc_{i-1}; the step combines the stage velocities
        and accelerations with weights b. Slide/hinge joints only (checked).
        """
        dt = self.model.opt.timestep
        a = np.array([0.5, 0.5, 1.0])
        b = np.array([1.0 / 6.0, 1.0 / 3.0, 1.0 / 3.0, 1.0 / 6.0])

        def stage(carry, coef):
            qvel_sum, qacc_sum, d = carry
            ai, bi, ci = coef
            kqpos = d0.qpos + dt * (ai * d.qvel)
            kqvel = d0.qvel + (ai * d.qacc) * dt
            d = self.forward(d.replace(qpos=kqpos, qvel=kqvel, time=d0.time + ci * dt))
            return (qvel_sum + bi * d.qvel, qacc_sum + bi * d.qacc, d), None

        coefs = jnp.asarray(np.stack([a, b[1:], a]).T, self.dtype)  # c_i (stage time) = a_i for RK4
        init = (b[0] * d0.qvel, b[0] * d0.qacc, d0)
        (qvel_sum, qacc_sum, d1), _ = jax.lax.scan(stage, init, coefs)
        return d1.replace(
            qpos=d0.qpos + dt * qvel_sum,
            qvel=d0.qvel + qacc_sum * dt,
            act=d0.act,
            time=d0.time + dt,
            qacc_warmstart=d1.qacc,
        )

    def integrate(self, d):
        """Second half of mj_step: advance a forwarded batch by one timestep."""
        if self._integrator == int(mjx.IntegratorType.RK4):
            return self._rk4(d)
        if not self._small_dense:
            return jax.vmap(lambda x: mjx.euler(self.model, x))(d)
        return jax.vmap(self._euler_small)(d)

    def _euler_small(self, x):
        """mjx.euler for one state of a small dense model (slide/hinge joints, no activations).

        Semi-implicit Euler with the joint damping implicit (unless disabled):
        qacc = (M + dt diag(damping))^-1 (qfrc_smooth + qfrc_constraint),
        qvel += dt qacc, qpos += dt qvel (new), warm start = forward qacc.
        """
        m = self.model
        dt = m.opt.timestep
        qacc = x.qacc
        if not m.opt.disableflags & mjx.DisableBit.EULERDAMP:
            mh = x._impl.M + jnp.diag(dt * m.dof_damping)
            qacc = cholesky_solve_upper(cholesky_upper(mh), x.qfrc_smooth + x.qfrc_constraint)
        qvel = x.qvel + qacc * dt
        return x.replace(qvel=qvel, qpos=x.qpos + dt * qvel, time=x.time + dt, qacc_warmstart=x.qacc)

    def start(self, d, ctrl: jax.Array):
        """Set ctrl (N, nu) and run the forward dynamics: ready for :meth:`hold`."""
        return self.forward(d.replace(ctrl=ctrl))

    def hold(self, d, frame_skip: int):
        """frame_skip physics steps of a batch already forwarded at its ctrl (see :meth:`start`).

        Returns the new state, not forwarded: its kinematics are stale.
        """
        d = self.integrate(d)
        d, _ = jax.lax.scan(lambda x, _: (self.integrate(self.forward(x)), None), d, None, length=frame_skip - 1)
        return d

    def hold_reward(self, d, aux: jax.Array, frame_skip: int):
        """:meth:`hold`, also returning the task reward summed over the frame_skip physics steps.

        dm_control computes the reward once per ``env.step``, after its
        physics step; TD-MPC2's DMC wrapper repeats the action and sums those
        rewards (``reward += step.reward``). The state after every physics
        step but the last is forwarded by the next step anyway, so its
        kinematics come for free; the caller refreshes the last state's
        (see :meth:`Oracle.step_reward`). Returns (new state, not forwarded;
        (N,) sum of the rewards after steps 1..frame_skip-1).
        """
        d = self.integrate(d)

        def body(x, _):
            x = self.forward(x)  # the kinematics of the state this step starts from
            return self.integrate(x), self.reward(x, aux)

        d, rewards = jax.lax.scan(body, d, None, length=frame_skip - 1)  # (frame_skip - 1, N)
        total = jnp.zeros(rewards.shape[1:], rewards.dtype)
        for i in range(frame_skip - 1):  # in order, as the wrapper adds them (frame_skip is static and small)
            total = total + rewards[i]
        return d, total

    def scan_observe(self, d, aux: jax.Array, ctrls: jax.Array, frame_skip: int) -> jax.Array:
        """Open-loop trajectory observations: ctrls (k, N, nu) -> (k, N, obs_dim).

        ``d`` is the batch forwarded at ``ctrls[0]``. Each env step holds its
        ctrl for frame_skip physics steps; the forward pass at the next step's
        ctrl then also refreshes the kinematics the observation reads, so no
        separate kinematics pass is needed (as dm_control's legacy Euler step,
        which ends with mj_step1). Physics state, warm start included, is
        carried between steps.
        """
        ctrl_next = jnp.concatenate([ctrls[1:], ctrls[-1:]], axis=0)

        def body(d, c_next):
            d = self.start(self.hold(d, frame_skip), c_next)
            return d, self.observe(d, aux)

        _, traj = jax.lax.scan(body, d, ctrl_next)
        return traj

def batch_chunk() -> int | None:
    """States per chunk for the physics kernels on this backend (None: no chunking).

    On CPU a batch runs as consecutive chunks of 4,096 states (``lax.map``):
    MJX's intermediates for a chunk stay in cache, where a 64k batch at once
    streams every intermediate array through memory (measured on 2 cores:
    64k acrobot steps 258k/s whole, 473k/s in chunks; 16k reacher 622k/s,
    989k/s). Accelerators get the whole batch (their parallelism is the batch).
    """
    return 4096 if jax.default_backend() == "cpu" else None


def map_chunks(fn, xs: tuple, chunk: int | None):
    """fn over a batch in chunks: xs pytrees of arrays with leading axis N -> fn's outputs, leading axis N.

    The batch is cut into the fewest chunks of at most ``chunk`` rows, of equal
    size (5,000 rows in chunks of at most 4,096: two of 2,500, not 4,096 + 904
    padded to 4,096); the last one is padded with copies of row 0 (valid
    inputs; the padded results are dropped). Sequential over chunks
    (``lax.map``), batched within.
    """
    n = jax.tree_util.tree_leaves(xs)[0].shape[0]
    if chunk is None or n <= chunk:
        return fn(*xs)
    n_chunks = -(-n // chunk)
    chunk = -(-n // n_chunks)
    pad = n_chunks * chunk - n

    def split(x):
        if pad:
            x = jnp.concatenate([x, jnp.broadcast_to(x[:1], (pad,) + x.shape[1:])])
        return x.reshape((n_chunks, chunk) + x.shape[1:])

    out = jax.lax.map(lambda c: fn(*c), jax.tree_util.tree_map(split, xs))
    return jax.tree_util.tree_map(lambda y: y.reshape((n_chunks * chunk,) + y.shape[2:])[:n], out)


#: A problem of at most this many states in all compiles its physics kernels
#: at XLA's backend optimisation level 0 (see :func:`compiler_options`).
FAST_COMPILE_MAX_STATES = 512


def compiler_options(total_states: int | None = None) -> dict[str, Any]:
    """XLA options for the physics kernels (per jit: nothing global changes).

    On CPU, XLA hands small dot products to YNNPACK fusions, which are slow on
    MJX's many tiny batched (3x3, 6x6, nv x nv) products: without them the
    reacher step runs ~30% faster, the RK4 tasks ~10% faster (see
    benchmarks/oracle_throughput.py). XLA:CPU's MLIR fusion emitters are
    switched off too: XLA's classic emitters compile these kernels faster
    and the code runs faster (the oracle's answers for 150 cartpole states
    compile in 6.9 s instead of 9.9 s; for 4,096 states they run in 106 ms
    instead of 160 ms; reacher and acrobot alike: benchmarks/codegen.py).

    ``total_states``: the states the caller will run through the kernel in
    all, when it knows them. When that is at most FAST_COMPILE_MAX_STATES the
    kernel is compiled at backend optimisation level 0, which halves its
    compile time (the oracle's answers for 150 cartpole states: 3.6 s
    instead of 6.9 s) and costs about 0.1 ms per state at run time (18 ms
    instead of 3 ms for those 150): seconds saved where compilation is all
    of the time. Big problems keep the optimised code (at 4,096 states level
    0 runs 5x slower).

    Codegen only: the operations are the same (results agree with the
    optimised code to a few float64 ulps; tests/test_oracle.py holds both to
    the same tolerances against dm_control).
    """
    if jax.default_backend() != "cpu":
        return {}
    options: dict[str, Any] = {"xla_cpu_experimental_ynn_fusion_type": "", "xla_cpu_use_fusion_emitters": False}
    if total_states is not None and total_states <= FAST_COMPILE_MAX_STATES:
        options["xla_backend_optimization_level"] = 0
    return options


@functools.lru_cache(maxsize=None)
def physics_for(task_cls: type, precision: Precision, solver: str | None = None, factor: str | None = None) -> Physics:
    """The Physics (mjx.Model) of a task at a precision: built on first use, then cached.

    ``solver`` and ``factor`` None pick the fastest exact paths for the model;
    tests and benchmarks force the general ones ("mjx", "lapack").
    """
    mj_model = load_mj_model(task_cls.xml_file)
    task = task_cls.from_model(mj_model)
    with precision_scope(precision):
        return Physics(task, mj_model, precision, solver, factor)


# ----------------------------------------------------------------------------
# the oracle
# ----------------------------------------------------------------------------


def _is_tracer(x: Any) -> bool:
    return isinstance(x, jax.core.Tracer)


class Oracle:
    """The true simulator of one DMC task, batched: ``next_obs = step(obs, action)``.

    Static configuration only (task, sizes, frame_skip, precision, default
    action set, actuator range); every method is pure and batched and may be
    called inside ``jax.jit``/``vmap``. Build with ``wmel_jax.make_oracle``.

    Attributes:
      task: task name, e.g. ``"cartpole-swingup"``.
      obs_dim, action_dim, frame_skip: ints.
      precision: ``"float32"`` or ``"float64"``; ``dtype`` the numpy dtype.
      actions: the default discrete action set, numpy (A, action_dim).
      ctrl_range: actuator control range, numpy (action_dim, 2) [low, high].

    Values (NaN/inf, action range) are checked when a method receives concrete
    arrays; under a trace only shapes can be checked, so call
    :meth:`validate_states` / :meth:`validate_actions` at your boundary.
    """

    def __init__(
        self, task_cls: type, frame_skip: int, precision: Precision, solver: str | None = None, factor: str | None = None
    ):
        self._task_cls = task_cls
        self._physics = physics_for(task_cls, precision, solver, factor)
        task = self._physics.task
        self.task: str = task.name
        self.obs_dim: int = task.obs_dim
        self.action_dim: int = task.action_dim
        self.frame_skip: int = frame_skip
        self.precision: Precision = precision
        self.dtype = np.dtype(_DTYPES[precision])
        actions = np.array(task.default_actions(), dtype=np.float64)
        actions.setflags(write=False)
        self.actions: np.ndarray = actions
        mj_model = load_mj_model(task_cls.xml_file)
        limited = np.asarray(mj_model.actuator_ctrllimited, bool)[:, None]
        ctrl_range = np.where(limited, np.asarray(mj_model.actuator_ctrlrange, np.float64), [-np.inf, np.inf])
        ctrl_range.setflags(write=False)
        self.ctrl_range: np.ndarray = ctrl_range
        if actions.shape[1] != self.action_dim or mj_model.nu != self.action_dim:
            raise AssertionError(f"{self.task}: action_dim does not match the model")  # a bug in the task module
        self._chunk = batch_chunk()
        opts = compiler_options()
        # Each kernel twice: with the CPU codegen options for top-level calls,
        # plain for calls inside a caller's trace (jit refuses options there).
        self._kernels = {
            name: (jax.jit(fn, static_argnums=static, compiler_options=opts), jax.jit(fn, static_argnums=static))
            for name, fn, static in (
                ("step", self._step_impl, ()),
                ("rollout", self._rollout_impl, ()),
                ("score", self._score_impl, ()),
                ("reset", self._reset_impl, (1,)),
            )
        }

    # -- identity: equal configuration, equal oracle (usable as a static arg) --

    def _key(self) -> tuple:
        return (self.task, self.frame_skip, self.precision, self._physics.solver, self._physics.factor)

    def __eq__(self, other: object) -> bool:
        return self is other or (isinstance(other, Oracle) and self._key() == other._key())

    def __wmel_cache_key__(self) -> tuple:
        """What the oracle's traced programs depend on besides the code (see wmel_jax.kernel_cache).

        The physics' paths as asked for (see :meth:`Physics.__wmel_cache_key__`): no MJX needed.
        """
        return ((self.task, self.frame_skip, self.precision), self._physics, self._chunk)

    def __hash__(self) -> int:
        # Without the physics' paths: hashing (lru_cache keys) must not build the MJX model.
        return hash((self.task, self.frame_skip, self.precision))

    def __repr__(self) -> str:
        return f"Oracle(task={self.task!r}, frame_skip={self.frame_skip}, precision={self.precision!r})"

    @property
    def physics(self) -> Physics:
        """The batched MJX physics underneath (for kernels such as sample_states)."""
        return self._physics

    # -- host-side validation --------------------------------------------------

    def validate_states(self, obs: Any, what: str = "state") -> np.ndarray:
        """Check a concrete state batch (N, obs_dim): shape, finiteness. Returns it as float64 numpy."""
        arr = _as_float_array(obs, f"{self.task}: {what}s")
        _check_width(arr, self.obs_dim, f"{self.task}: {what}s", "obs_dim")
        _check_finite(arr, f"{self.task}: {what}")
        return arr

    def validate_state_range(self, obs: Any, what: str = "state") -> np.ndarray:
        """A checked state batch (:meth:`validate_states`) within the task's physical bounds (``obs_limits``).

        WmelError naming the first row and component far outside them: such a
        row is not a state of this task (and would overflow the model).
        """
        arr = self.validate_states(obs, what)
        limits = self._physics.task.obs_limits
        if not limits:
            return arr
        lo = np.array([low for _, low, _ in limits])
        hi = np.array([high for _, _, high in limits])
        bad = np.flatnonzero(((arr < lo) | (arr > hi)).any(axis=1))
        if bad.size:
            i = int(bad[0])
            j = int(np.flatnonzero((arr[i] < lo) | (arr[i] > hi))[0])
            name, low, high = limits[j]
            raise WmelError(
                f"{self.task}: {what} row {i} is far outside the task's physical range: {name} = {arr[i, j]:g} "
                f"(bounds [{low:g}, {high:g}]; {bad.size} such rows)"
            )
        return arr

    def validate_actions(self, actions: Any, what: str = "action") -> np.ndarray:
        """Check concrete actions (M, action_dim): shape, finiteness, actuator range."""
        arr = _as_float_array(actions, f"{self.task}: {what}s")
        _check_width(arr, self.action_dim, f"{self.task}: {what}s", "action_dim")
        _check_finite(arr, f"{self.task}: {what}")
        lo, hi = self.ctrl_range[:, 0], self.ctrl_range[:, 1]
        bad = np.flatnonzero(((arr < lo) | (arr > hi)).any(axis=1))
        if bad.size:
            i = int(bad[0])
            raise WmelError(
                f"{self.task}: {what} row {i} = {arr[i].tolist()} is outside the actuator range "
                f"[{lo.tolist()}, {hi.tolist()}]"
            )
        return arr

    def _check(self, x: Any, kind: str, what: str) -> jax.Array:
        """Boundary check of one argument; values only when concrete."""
        width = self.obs_dim if kind == "state" else self.action_dim
        if _is_tracer(x):
            if x.ndim != 2 or x.shape[1] != width or x.shape[0] == 0:
                name = "obs_dim" if kind == "state" else "action_dim"
                raise WmelError(f"{self.task}: {what}s must have shape (N, {name}={width}) with N >= 1; got {tuple(x.shape)}")
            return x.astype(self.dtype)
        arr = self.validate_states(x, what) if kind == "state" else self.validate_actions(x, what)
        # A jax array goes on as it is (no host round trip); anything else as the checked copy.
        return jnp.asarray(x if isinstance(x, jax.Array) else arr, self.dtype)

    # -- public batched methods ------------------------------------------------

    def step(self, obs: Any, action: Any) -> jax.Array:
        """Next observations: obs (N, obs_dim), action (N, action_dim) -> (N, obs_dim)."""
        return self.step_reward(obs, action)[0]

    def step_reward(self, obs: Any, action: Any) -> tuple[jax.Array, jax.Array]:
        """Next observations and the task reward of each transition.

        obs (N, obs_dim), action (N, action_dim) -> (next_obs (N, obs_dim),
        reward (N,)). The reward is dm_control's ``env.step(action).reward``
        summed over the frame_skip repeats, as TD-MPC2's DMC wrapper sums it.
        """
        with precision_scope(self.precision):
            obs = self._check(obs, "state", "state")
            action = self._check(action, "action", "action")
            if obs.shape[0] != action.shape[0]:
                raise WmelError(f"{self.task}: {obs.shape[0]} states but {action.shape[0]} actions")
            return self._run("step", obs, action)

    def step_all(self, obs: Any, actions: Any = None) -> jax.Array:
        """Every action from every state: obs (N, obs_dim), actions (A, action_dim) -> (N, A, obs_dim).

        ``actions`` defaults to the oracle's default action set.
        """
        return self.step_all_reward(obs, actions)[0]

    def step_all_reward(self, obs: Any, actions: Any = None) -> tuple[jax.Array, jax.Array]:
        """Every action from every state, with rewards: -> ((N, A, obs_dim), (N, A)).

        obs (N, obs_dim), actions (A, action_dim) (default: the oracle's
        default action set). Rewards as :meth:`step_reward`.
        """
        with precision_scope(self.precision):
            obs = self._check(obs, "state", "state")
            actions = self._check(self.actions if actions is None else actions, "action", "action")
            n, a = obs.shape[0], actions.shape[0]
            # The pairs go through the step kernel itself (shared compile, same numbers as step).
            nxt, reward = self._run("step", jnp.repeat(obs, a, axis=0), jnp.tile(actions, (n, 1)))
            return nxt.reshape(n, a, self.obs_dim), reward.reshape(n, a)

    def rollout(self, obs: Any, action_seq: Any) -> jax.Array:
        """Open-loop k-step trajectories with one shared action sequence.

        obs (N, obs_dim), action_seq (k, action_dim) -> (k, N, obs_dim); entry t
        is the observation after actions 0..t. The physics state (including the
        solver warm start) is carried between steps, as in dm_control.
        """
        with precision_scope(self.precision):
            obs = self._check(obs, "state", "state")
            action_seq = self._check(action_seq, "action", "action_seq step")
            return self._run("rollout", obs, action_seq)

    def score(self, obs: Any) -> jax.Array:
        """The task's M3 score per state (lower is better): obs (N, obs_dim) -> (N,)."""
        with precision_scope(self.precision):
            return self._run("score", self._check(obs, "state", "state"))

    def reset(self, key: jax.Array, n: int) -> jax.Array:
        """n observations from the task's reset distribution (dm_control's initialize_episode)."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise WmelError(f"{self.task}: reset needs a positive int n; got {n!r}")
        with precision_scope(self.precision):
            return self._run("reset", key, int(n))

    # -- kernels (traced once per shape) ---------------------------------------

    def _run(self, name: str, *args):
        top_level, nested = self._kernels[name]
        traced = any(_is_tracer(x) for x in jax.tree_util.tree_leaves(args))
        return (nested if traced else top_level)(*args)

    def _step_impl(self, obs, action):
        """(next_obs (N, obs_dim), reward (N,)): one kernel for step, step_all and their rewards."""
        p = self._physics

        def step(obs, action):
            d = p.start(p.state(obs), action)
            aux = p.aux(obs, d)  # the forward pass computed the kinematics at obs' qpos
            d, reward = p.hold_reward(d, aux, self.frame_skip)
            d = p.kinematics(d)
            return p.observe(d, aux), reward + p.reward(d, aux)  # the last step's reward added last

        return map_chunks(step, (obs, action), self._chunk)

    def _rollout_impl(self, obs, action_seq):
        p = self._physics
        k, nu = action_seq.shape

        def rollout(obs):  # -> (N, k, obs_dim): batch first for map_chunks
            ctrls = jnp.broadcast_to(action_seq[:, None, :], (k, obs.shape[0], nu))
            d = p.start(p.state(obs), ctrls[0])
            return jnp.swapaxes(p.scan_observe(d, p.aux(obs, d), ctrls, self.frame_skip), 0, 1)

        return jnp.swapaxes(map_chunks(rollout, (obs,), self._chunk), 0, 1)

    def _score_impl(self, obs):
        return jax.vmap(self._physics.task.score)(obs)

    def _reset_impl(self, key, n):
        p = self._physics
        d, aux = p.reset(jax.random.split(key, n))
        return p.observe(d, aux)


# ----------------------------------------------------------------------------
# host-side checks
# ----------------------------------------------------------------------------


def _as_float_array(x: Any, what: str) -> np.ndarray:
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise WmelError(f"{what}: not a numeric array ({e})") from None
    return arr


def _check_width(arr: np.ndarray, width: int, what: str, name: str) -> None:
    if arr.ndim != 2 or arr.shape[1] != width or arr.shape[0] == 0:
        raise WmelError(f"{what} must have shape (N, {name}={width}) with N >= 1; got {arr.shape}")


def _check_finite(arr: np.ndarray, what: str) -> None:
    bad = np.flatnonzero(~np.isfinite(arr).all(axis=1))
    if bad.size:
        i = int(bad[0])
        raise WmelError(f"{what} row {i} is not finite: {arr[i].tolist()} ({bad.size} bad rows)")
