"""The architecture of a TD-MPC2 world model, read from its parameter shapes.

:class:`Arch` is the static (hashable) description every jitted function is
keyed on: two checkpoints with equal ``Arch`` share compiled code, and their
parameters can be stacked and vmapped.

An ``Arch`` is never assumed from TD-MPC2's model-size table (released
checkpoints exist whose layer sizes differ from it): :func:`infer_arch` reads
it from the tensor shapes, and :func:`check_params` verifies that every tensor
fits. The parameter tree is a plain nested dict; in its flat form paths are
``/``-joined (``"encoder/layer_0/linear/kernel"``).

Parameter tree (flax naming; torch ``(out, in)`` weights appear transposed)::

    encoder/layer_{i}/linear/{kernel,bias}, encoder/layer_{i}/ln/{scale,bias}
    dynamics/layer_{i}/...          (every layer normed; the last one ends in SimNorm)
    reward/layer_{0,1}/..., reward/layer_2/{kernel,bias}        (plain last layer)
    pi/..., termination/...         (as reward)
    q/layer_{i}/...                 (as reward, every array with a leading num_q axis)
    decoder/layer_{0,2,4}/{kernel,bias}                        (adapter schema)
    task_emb/embedding (num_tasks, task_dim), action_masks (num_tasks, action_dim)
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Mapping

from wmel_jax.errors import WmelError

__all__ = [
    "Arch",
    "param_shapes",
    "infer_arch",
    "check_params",
    "check_param_shapes",
    "flatten_params",
    "unflatten_params",
    "DEFAULT_SIMNORM_DIM",
    "DEFAULT_VMIN",
    "DEFAULT_VMAX",
]

#: Upstream TD-MPC2 config defaults for what the tensor shapes cannot tell.
DEFAULT_SIMNORM_DIM = 8
DEFAULT_VMIN = -10.0
DEFAULT_VMAX = 10.0


@dataclasses.dataclass(frozen=True)
class Arch:
    """Static shape description of one world model (hashable: a jit cache key).

    ``num_enc_layers`` counts the encoder's Linear layers (upstream's config
    value for every value >= 2; upstream's 1 builds the same network as 2).
    Heads that a checkpoint lacks are 0/False/None: ``num_q == 0`` means no Q
    ensemble, ``num_bins == 0`` no reward or Q head, ``decoder_hidden is None``
    no observation decoder, ``num_tasks == 0`` a single-task model.
    """

    obs_dim: int
    action_dim: int
    latent_dim: int
    enc_dim: int
    mlp_dim: int
    num_enc_layers: int
    simnorm_dim: int = DEFAULT_SIMNORM_DIM
    task_dim: int = 0
    num_tasks: int = 0
    num_bins: int = 0
    num_q: int = 0
    decoder_hidden: int | None = None
    has_reward: bool = False
    has_pi: bool = False
    has_termination: bool = False
    has_action_masks: bool = False
    vmin: float = DEFAULT_VMIN
    vmax: float = DEFAULT_VMAX

    def __post_init__(self) -> None:
        for f in ("obs_dim", "action_dim", "latent_dim", "enc_dim", "mlp_dim", "simnorm_dim"):
            if int(getattr(self, f)) < 1:
                raise WmelError(f"architecture: {f} must be positive, got {getattr(self, f)}")
        if self.num_enc_layers < 2:
            raise WmelError(f"architecture: num_enc_layers must be >= 2, got {self.num_enc_layers}")
        if self.latent_dim % self.simnorm_dim:
            raise WmelError(
                f"architecture: latent_dim {self.latent_dim} is not a multiple of "
                f"simnorm_dim {self.simnorm_dim}"
            )
        if (self.task_dim > 0) != (self.num_tasks > 0):
            raise WmelError("architecture: task_dim and num_tasks must both be zero or both positive")
        if self.has_action_masks and not self.num_tasks:
            raise WmelError("architecture: action masks need a multitask model")
        if (self.has_reward or self.num_q) and self.num_bins < 1:
            raise WmelError("architecture: reward and Q heads need num_bins >= 1")

    @property
    def multitask(self) -> bool:
        return self.num_tasks > 0

    @property
    def has_decoder(self) -> bool:
        return self.decoder_hidden is not None

    @property
    def has_q(self) -> bool:
        return self.num_q > 0

    @property
    def enc_hidden(self) -> tuple[int, ...]:
        """Encoder hidden widths: ``num_enc_layers - 1`` layers of ``enc_dim``."""
        return (self.enc_dim,) * (self.num_enc_layers - 1)

    def heads(self) -> list[str]:
        """Names of the networks present, for messages: ['encoder', 'dynamics', ...]."""
        names = ["encoder", "dynamics"]
        names += [n for n, ok in (
            ("reward", self.has_reward), ("pi", self.has_pi), ("q", self.has_q),
            ("termination", self.has_termination), ("decoder", self.has_decoder),
        ) if ok]
        return names

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Arch:
        """Inverse of :meth:`to_dict`; unknown or mistyped fields are a WmelError."""
        if not isinstance(d, Mapping):
            raise WmelError(f"architecture must be a mapping, got {type(d).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(fields))
        if unknown:
            raise WmelError(f"architecture has unknown fields {unknown}")
        kwargs: dict[str, Any] = {}
        for name, value in d.items():
            kwargs[name] = _coerce(name, value)
        try:
            return cls(**kwargs)
        except TypeError as e:  # a required field missing
            raise WmelError(f"architecture incomplete: {e}") from None


def _coerce(name: str, value: Any) -> Any:
    if name in ("vmin", "vmax"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise WmelError(f"architecture field {name} must be a number, got {value!r}")
        return float(value)
    if name.startswith("has_"):
        if not isinstance(value, bool):
            raise WmelError(f"architecture field {name} must be true/false, got {value!r}")
        return value
    if name == "decoder_hidden" and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise WmelError(f"architecture field {name} must be an integer, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------- #
# Expected parameter shapes of an Arch (pure Python: no tracing, no jax)
# --------------------------------------------------------------------------- #


def _mlp_shapes(
    out: dict[str, tuple[int, ...]],
    prefix: str,
    dims: list[int],
    last_normed: bool,
    lead: tuple[int, ...] = (),
) -> None:
    for i in range(len(dims) - 1):
        fan_in, fan_out = dims[i], dims[i + 1]
        if i < len(dims) - 2 or last_normed:
            out[f"{prefix}/layer_{i}/linear/kernel"] = lead + (fan_in, fan_out)
            out[f"{prefix}/layer_{i}/linear/bias"] = lead + (fan_out,)
            out[f"{prefix}/layer_{i}/ln/scale"] = lead + (fan_out,)
            out[f"{prefix}/layer_{i}/ln/bias"] = lead + (fan_out,)
        else:
            out[f"{prefix}/layer_{i}/kernel"] = lead + (fan_in, fan_out)
            out[f"{prefix}/layer_{i}/bias"] = lead + (fan_out,)


def param_shapes(arch: Arch) -> dict[str, tuple[int, ...]]:
    """Flat path -> shape of every parameter a model of ``arch`` has."""
    a = arch
    shapes: dict[str, tuple[int, ...]] = {}
    za = a.latent_dim + a.task_dim + a.action_dim  # [z, task embedding, action]
    zt = a.latent_dim + a.task_dim  # [z, task embedding]
    if a.multitask:
        shapes["task_emb/embedding"] = (a.num_tasks, a.task_dim)
    if a.has_action_masks:
        shapes["action_masks"] = (a.num_tasks, a.action_dim)
    _mlp_shapes(shapes, "encoder", [a.obs_dim + a.task_dim, *a.enc_hidden, a.latent_dim], True)
    _mlp_shapes(shapes, "dynamics", [za, a.mlp_dim, a.mlp_dim, a.latent_dim], True)
    if a.has_reward:
        _mlp_shapes(shapes, "reward", [za, a.mlp_dim, a.mlp_dim, a.num_bins], False)
    if a.has_termination:
        _mlp_shapes(shapes, "termination", [zt, a.mlp_dim, a.mlp_dim, 1], False)
    if a.has_pi:
        _mlp_shapes(shapes, "pi", [zt, a.mlp_dim, a.mlp_dim, 2 * a.action_dim], False)
    if a.has_q:
        _mlp_shapes(shapes, "q", [za, a.mlp_dim, a.mlp_dim, a.num_bins], False, lead=(a.num_q,))
    if a.has_decoder:
        h = a.decoder_hidden
        for i, (fan_in, fan_out) in zip((0, 2, 4), ((a.latent_dim, h), (h, h), (h, a.obs_dim))):
            shapes[f"decoder/layer_{i}/kernel"] = (fan_in, fan_out)
            shapes[f"decoder/layer_{i}/bias"] = (fan_out,)
    return shapes


# --------------------------------------------------------------------------- #
# Reading an Arch from shapes
# --------------------------------------------------------------------------- #

_LAYER = re.compile(r"^layer_(\d+)$")


def _layer_indices(shapes: Mapping[str, tuple[int, ...]], prefix: str) -> list[int]:
    found = set()
    for path in shapes:
        parts = path.split("/")
        if parts[0] == prefix and len(parts) > 1:
            m = _LAYER.match(parts[1])
            if m:
                found.add(int(m.group(1)))
    return sorted(found)


def infer_arch(
    shapes: Mapping[str, tuple[int, ...]],
    *,
    simnorm_dim: int = DEFAULT_SIMNORM_DIM,
    vmin: float = DEFAULT_VMIN,
    vmax: float = DEFAULT_VMAX,
    action_dim: int | None = None,
    describe: Callable[[str], str] = lambda path: path,
    show_shape: Callable[[str, tuple[int, ...]], list[int]] = lambda path, s: list(s),
) -> Arch:
    """Read the architecture from flat parameter shapes, then check they all fit.

    ``action_dim`` is needed only when the model has no policy head (adapter
    schema): it splits the dynamics input into latent and action parts.
    ``describe`` renders a flax path in the user's terms (e.g. the torch key)
    and ``show_shape(path, shape)`` its shape, for error messages. Raises
    WmelError naming the first key that is missing, unexpected, or of a shape
    that does not fit.
    """

    def shape(path: str, ndim: int) -> tuple[int, ...]:
        if path not in shapes:
            raise WmelError(f"missing key {describe(path)!r}")
        s = tuple(shapes[path])
        if len(s) != ndim:
            raise WmelError(
                f"key {describe(path)!r} has shape {show_shape(path, s)}, expected {ndim} dimensions"
            )
        return s

    def kernel(prefix: str, i: int, lead: int = 0) -> tuple[int, int]:
        p = f"{prefix}/layer_{i}/linear/kernel"
        if p not in shapes:
            p = f"{prefix}/layer_{i}/kernel"
        s = shape(p, 2 + lead)
        return s[-2], s[-1]

    def count(prefix: str) -> int:
        idx = _layer_indices(shapes, prefix)
        if idx and idx != list(range(len(idx))):
            raise WmelError(f"{prefix} layers are not numbered 0..{len(idx) - 1}: {idx}")
        return len(idx)

    task_dim = num_tasks = 0
    if "task_emb/embedding" in shapes:
        num_tasks, task_dim = shape("task_emb/embedding", 2)

    n_enc = count("encoder")
    if n_enc == 0:
        raise WmelError(f"missing key {describe('encoder/layer_0/linear/kernel')!r}")
    if n_enc < 2:
        raise WmelError(f"the encoder has {n_enc} layer; TD-MPC2 encoders have at least 2")
    enc_in, enc_dim = kernel("encoder", 0)
    latent_dim = kernel("encoder", n_enc - 1)[1]
    obs_dim = enc_in - task_dim

    dyn_in, mlp_dim = kernel("dynamics", 0)
    has_pi = count("pi") > 0
    if has_pi:
        pi_out = kernel("pi", count("pi") - 1)[1]
        if pi_out % 2:
            raise WmelError(f"policy output {describe('pi/layer_2/kernel')!r} has odd width {pi_out}")
        inferred_action_dim = pi_out // 2
        if action_dim is not None and action_dim != inferred_action_dim:
            raise WmelError(f"action_dim {action_dim} does not fit the policy head ({inferred_action_dim})")
        action_dim = inferred_action_dim
    elif action_dim is None:
        action_dim = dyn_in - latent_dim - task_dim
    if action_dim < 1:
        raise WmelError(
            f"dynamics input width {dyn_in} ({describe('dynamics/layer_0/linear/kernel')!r}) "
            f"leaves no room for an action after latent {latent_dim} + task {task_dim}"
        )

    has_reward = count("reward") > 0
    num_q = 0
    num_bins = 0
    if has_reward:
        num_bins = kernel("reward", count("reward") - 1)[1]
    if count("q") > 0:
        path = "q/layer_0/linear/kernel"
        num_q = shape(path, 3)[0]
        q_bins = kernel("q", count("q") - 1, lead=1)[1]
        if has_reward and q_bins != num_bins:
            raise WmelError(f"Q heads have {q_bins} bins but the reward head has {num_bins}")
        num_bins = q_bins
    decoder_hidden = None
    if _layer_indices(shapes, "decoder"):  # layers 0, 2, 4 (torch Sequential indices)
        decoder_hidden = shape("decoder/layer_0/kernel", 2)[1]

    if obs_dim < 1:
        raise WmelError(f"encoder input width {enc_in} is not larger than the task embedding ({task_dim})")
    arch = Arch(
        obs_dim=obs_dim,
        action_dim=action_dim,
        latent_dim=latent_dim,
        enc_dim=enc_dim,
        mlp_dim=mlp_dim,
        num_enc_layers=n_enc,
        simnorm_dim=simnorm_dim,
        task_dim=task_dim,
        num_tasks=num_tasks,
        num_bins=num_bins,
        num_q=num_q,
        decoder_hidden=decoder_hidden,
        has_reward=has_reward,
        has_pi=has_pi,
        has_termination=count("termination") > 0,
        has_action_masks="action_masks" in shapes,
        vmin=vmin,
        vmax=vmax,
    )
    check_params(arch, shapes, describe=describe, show_shape=show_shape)
    return arch


def check_params(
    arch: Arch,
    shapes: Mapping[str, tuple[int, ...]],
    *,
    describe: Callable[[str], str] = lambda path: path,
    show_shape: Callable[[str, tuple[int, ...]], list[int]] = lambda path, s: list(s),
) -> None:
    """Every expected parameter present with its shape, nothing else: else WmelError."""
    check_param_shapes(param_shapes(arch), shapes, describe=describe, show_shape=show_shape)


def check_param_shapes(
    expected: Mapping[str, tuple[int, ...]],
    shapes: Mapping[str, tuple[int, ...]],
    *,
    describe: Callable[[str], str] = lambda path: path,
    show_shape: Callable[[str, tuple[int, ...]], list[int]] = lambda path, s: list(s),
) -> None:
    """``shapes`` holds exactly the ``expected`` parameter paths, each with its shape: else WmelError naming the first.

    Shared by every model family's ``check_params`` (each gives its own expected shapes).
    """
    missing = [p for p in expected if p not in shapes]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise WmelError(f"missing key {describe(missing[0])!r}{more}")
    extra = [p for p in shapes if p not in expected]
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise WmelError(f"unexpected key {describe(extra[0])!r}{more}")
    for path, want in expected.items():
        got = tuple(shapes[path])
        if got != want:
            raise WmelError(
                f"key {describe(path)!r} has shape {show_shape(path, got)} but the architecture read "
                f"from the other tensors needs {show_shape(path, want)} (layer sizes do not fit together)"
            )


def flatten_params(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> ``{"a/b/c": leaf}``."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, path))
        else:
            flat[path] = value
    return flat


def unflatten_params(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a/b/c": leaf}`` -> nested dict (plain dicts: a pytree jax understands)."""
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree
