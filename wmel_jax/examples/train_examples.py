"""Train the shipped example world models (torch; never imported by the package).

Usage, from the repository root (CPU; a few minutes on 2 cores)::

    python -m wmel_jax.examples.train_examples [--tasks T ...] [--out DIR]

For each task (cartpole-swingup, reacher-easy, acrobot-swingup) this trains one
small TD-MPC2-architecture world model in the adapter schema, in the 1M layout
(``adapter_arch(1, ...)``: encoder obs -> 256 -> 128 latent, latent dynamics
(128 + action) -> 384 -> 384 -> 128, both ending in SimNorm(8); an observation
decoder 128 -> 128 -> 128 -> obs with SiLU), and saves it twice:

- ``<task>-weak.pt``: the same run stopped early (``weak_steps`` updates):
  clearly worse on M1 and M2 than the good model, yet about as good as copying
  the state or better (the manifest lists that identity baseline per task);
- ``<task>-good.pt``: the run at its end (``good_steps`` updates).

Each is converted with ``converters.convert.convert_checkpoint`` to
``<task>-<quality>.safetensors`` (the demo runs without torch), evaluated by the
per-sample reference path (``benchmarks.reference.run_reference``, N = 150,
k = 10, seed 0), and listed in ``manifest.json`` with its sha256, training
summary and reference metrics.

Data (oracle transitions from dm_control, ``benchmarks.reference``): seeded
random-action rollouts through the task exactly like the evaluator's state
batch (reset every 25 steps), but with the env built with ``{"random": 1000 +
seed}``, so the training states are not the evaluation states (``{"random": 0}``),
and from every visited state the oracle successor under every action of the
task's action set (``dm_control_oracle``).

Loss. The network trains on standardized observations ``x_n = (x - mean) /
std`` (the training states' per-dimension mean and std; without it the 1M
encoder barely moves on cartpole's low-variance inputs in thousands of steps),
and the standardization is then folded into the first encoder layer and the
last decoder layer (:func:`fold_normalization`), so the saved model is the
plain adapter architecture on raw observations. Per batch of states ``s``
with oracle successors ``s'_a`` for every action ``a`` (``z = encode(s)``,
``z'_a = next(z, a)``, ``pred_a = decode(z'_a)``), all in standardized units::

    prediction      mean_a mean_d (pred_a - s'_a)_d^2
    contrast        mean_a sum_d c_d ((pred_a - mean_a pred_a) - (s'_a - mean_a s'_a))_d^2
    reconstruction  mean_d (decode(z) - s)_d^2
    consistency     mean_a mean_j (z'_a - stopgrad(encode(s'_a)))_j^2      (TD-MPC2's latent loss)
    rollout         mean_t mean_d (s^_t - s_t)_d^2 along 5 recorded steps, open loop in
                    observation space: s^_{t+1} = decode(next(encode(s^_t), a_t))

The contrast term fits the part of the successor that depends on the action,
which is what M3 ranks and which is tiny (cartpole's score differs by ~5e-5
between actions): ``c_d = 1 / max(var_d, 1e-5) / dims`` with ``var_d`` the
variance of the action-centred successors (the floor keeps acrobot's ~1e-4-std
orientation effects from weights that swamp every other gradient). The
rollout term trains what M2 measures (the model fed its own decoded
prediction). Total = prediction + contrast + 0.5 reconstruction + consistency
+ 0.5 rollout (``LOSS_WEIGHTS``). The reported ``final_train_loss`` is that
total, averaged over the last 50 updates before the snapshot.

Adam (lr 1e-3, cosine decay to 1e-5 over ``good_steps``), gradient clipping
at norm 20 (TD-MPC2's), torch's default initialisation under
``torch.manual_seed(seed)``; batches drawn with ``numpy.random.default_rng(seed)``.
**DreamerV3** (``--families dreamerv3``): one small NM512/dreamerv3-torch world
model for cartpole-swingup (:data:`DREAMER`: 4 x 32 categorical latents, deter
64, hidden 64, heads 2 x 64, encoder and decoder 2 x 128; everything else
upstream's dmc_proprio: SiLU, LayerNorm, unimix 0.01, learned initial state,
symlog inputs), built with the project's torch mirror
(``converters/dreamerv3_torch.py``) and trained the way upstream trains it:
chunks of ``seq_len`` steps of random-action episodes (25 steps from the
task's reset, actions from the task's action set, env ``{"random": 1000 +
seed}``), every chunk's first step a first frame (upstream's replay marks
it so), posteriors sampled straight-through, and upstream's world-model loss:
the decoder's symlog MSE (summed over dimensions), the reward head's two-hot
log loss over its 255 symlog buckets, the continuation head's log loss (DMC:
always 1), and ``0.5 max(1, KL(sg(post) || prior)) + 0.1 max(1, KL(post ||
sg(prior)))``; Adam (lr 3e-4, eps 1e-8: upstream's 1e-4 is for a million
steps), gradient norm clipped at 1000. Frame skip 1, so it is evaluated in one
run with the TD-MPC2 examples. Saved as upstream's ``latest.pt``
(``{"agent_state_dict"}``, the behaviours' copies included; without the
optimizer states, to keep the file small), converted with ``--frame-skip 1``,
measured by ``benchmarks.reference.run_reference_dreamer``.

The run is deterministic for a given torch build, CPU and thread count
(``--threads``, default 1); the ``.pt`` bytes still differ between runs,
because torch.save writes a random serialization id into every file. The
manifest records the sha256 of the files actually shipped.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("MUJOCO_GL", "disable")  # before dm_control is imported

import numpy as np
import torch

from wmel_jax.benchmarks import reference as R
from wmel_jax.converters.convert import convert_checkpoint
from wmel_jax.converters import dreamerv3_torch as DT
from wmel_jax.converters.tdmpc2_torch import AdapterWorldModel, adapter_arch, save_adapter
from wmel_jax.converters.tasks import KNOWN_TASK_DIMS

EXAMPLES_DIR = Path(__file__).resolve().parent
MANIFEST_NAME = "manifest.json"
MODEL_SIZE = 1
DECODER_HIDDEN = 128
#: Multipliers of the loss terms (see the module docstring).
LOSS_WEIGHTS = {"prediction": 1.0, "contrast": 1.0, "reconstruction": 0.5, "consistency": 1.0, "rollout": 0.5}
ROLLOUT_HORIZON = 5
#: Floor of the action-effect variance (standardized units) in the contrast weights:
#: acrobot's one-step action effect on its orientations is ~1e-4 std, and weights of
#: 1e8 on those let the contrast term swamp every other gradient (M1 1.03 after 2000
#: updates, worse than copying the state; 0.07 with the floor).
CONTRAST_VAR_FLOOR = 1e-5
GRAD_CLIP = 20.0
LR, LR_MIN = 1e-3, 1e-5
#: Reference-path evaluation of each saved model (the defaults of ``wmel-jax eval``).
EVAL = {"n_states": 150, "k_steps": 10, "seed": 0}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One task's training run. ``weak_steps`` < ``good_steps`` updates of the same run."""

    task: str
    seed: int
    n_states: int  # states visited by the data rollout (each with all its action successors)
    good_steps: int
    weak_steps: int
    batch_states: int = 64
    batch_rollouts: int = 32


#: Weak steps per task: where that run's model is clearly worse than at the end
#: but already beats or matches copying the state (M1 of the identity model at
#: N = 150: cartpole 0.104, reacher 2.72, acrobot 0.155; see the manifest).
CONFIGS: dict[str, TrainConfig] = {
    "cartpole-swingup": TrainConfig("cartpole-swingup", seed=1, n_states=6000, good_steps=3000, weak_steps=200),
    "reacher-easy": TrainConfig("reacher-easy", seed=2, n_states=6000, good_steps=3000, weak_steps=300),
    "acrobot-swingup": TrainConfig("acrobot-swingup", seed=3, n_states=6000, good_steps=3000, weak_steps=1000),
}


# --------------------------------------------------------------------------- #
# Data
# --------------------------------------------------------------------------- #


@dataclasses.dataclass
class Dataset:
    """Oracle transitions for one task.

    states: (N, D) float32 visited observations; actions: (A, action_dim) the action set;
    successors: (N, A, D) oracle(states[i], actions[j]); segments: (M, H + 1) indices of
    consecutive states along the rollout; segment_actions: (M, H) action indices between them.
    """

    states: np.ndarray
    actions: np.ndarray
    successors: np.ndarray
    segments: np.ndarray
    segment_actions: np.ndarray


def make_dataset(cfg: TrainConfig) -> Dataset:
    actions = R.default_actions(cfg.task)
    # A rollout seed and an env seed of its own: the evaluation batch uses env seed 0.
    states, taken = R.rollout_states(cfg.task, cfg.n_states, seed=cfg.seed, env_seed=1000 + cfg.seed)
    oracle_step, _, _ = R.dm_control_oracle(cfg.task)
    successors = np.array([[oracle_step(s, a) for a in actions] for s in states], dtype=np.float64)
    index = {a: j for j, a in enumerate(actions)}
    taken_idx = np.array([-1 if a is None else index[a] for a in taken])
    starts = [i for i in range(len(states) - ROLLOUT_HORIZON)
              if (taken_idx[i:i + ROLLOUT_HORIZON] >= 0).all()]
    segments = np.array([[i + t for t in range(ROLLOUT_HORIZON + 1)] for i in starts])
    segment_actions = np.array([taken_idx[i:i + ROLLOUT_HORIZON] for i in starts])
    return Dataset(
        states=np.asarray(states, dtype=np.float32),
        actions=np.asarray(actions, dtype=np.float32),
        successors=successors.astype(np.float32),
        segments=segments,
        segment_actions=segment_actions,
    )


# --------------------------------------------------------------------------- #
# Training
# --------------------------------------------------------------------------- #


def _inverse_variance(x: np.ndarray, floor: float) -> np.ndarray:
    """Per-dimension ``1 / max(var, floor) / dims`` of ``x`` (..., dims)."""
    var = x.reshape(-1, x.shape[-1]).astype(np.float64).var(axis=0)
    return (1.0 / np.maximum(var, floor) / x.shape[-1]).astype(np.float32)


def _losses(model: AdapterWorldModel, data: dict[str, torch.Tensor], s_idx: torch.Tensor,
            seg_idx: torch.Tensor) -> dict[str, torch.Tensor]:
    w, c = data["w"], data["c"]
    s = data["states"][s_idx]  # (B, D)
    target = data["successors"][s_idx]  # (B, A, D)
    actions = data["actions"]  # (A, ad)
    b, a_count = s.shape[0], actions.shape[0]
    z = model.encode(s)  # (B, L)
    z_next = model.next(z[:, None, :].expand(b, a_count, -1), actions[None].expand(b, -1, -1))
    pred = model.decode(z_next)  # (B, A, D)
    out = {
        "prediction": ((pred - target) ** 2 * w).sum(-1).mean(),
        "contrast": (((pred - pred.mean(1, keepdim=True)) - (target - target.mean(1, keepdim=True))) ** 2
                     * c).sum(-1).mean(),
        "reconstruction": ((model.decode(z) - s) ** 2 * w).sum(-1).mean(),
    }
    with torch.no_grad():
        z_target = model.encode(target)
    out["consistency"] = ((z_next - z_target) ** 2).mean()
    # Open-loop rollout in observation space, as M2 rolls the model.
    seg_states = data["states"][data["segments"][seg_idx]]  # (R, H + 1, D)
    seg_actions = actions[data["segment_actions"][seg_idx]]  # (R, H, ad)
    obs, rollout = seg_states[:, 0], 0.0
    for t in range(ROLLOUT_HORIZON):
        obs = model.predict(obs, seg_actions[:, t])
        rollout = rollout + ((obs - seg_states[:, t + 1]) ** 2 * w).sum(-1).mean()
    out["rollout"] = rollout / ROLLOUT_HORIZON
    return out


def _new_model(task: str) -> AdapterWorldModel:
    obs_dim, action_dim = KNOWN_TASK_DIMS[task]
    return AdapterWorldModel(adapter_arch(MODEL_SIZE, obs_dim, action_dim, decoder_hidden=DECODER_HIDDEN))


@torch.no_grad()
def fold_normalization(state: dict[str, torch.Tensor], mean: np.ndarray, std: np.ndarray
                       ) -> dict[str, torch.Tensor]:
    """The state dict of a model on raw observations from one trained on normalized ones.

    Trained: ``f_n(x_n, a)`` with ``x_n = (x - mean) / std``, predicting
    normalized observations. Folded: ``f(x, a) = std * f_n((x - mean) / std, a) + mean``,
    by rescaling the encoder's first Linear (``W / std``, ``b - W (mean / std)``)
    and the decoder's last (``std * W``, ``std * b + mean``), computed in float64.
    The architecture is unchanged: normalization lives in the weights.
    """
    out = {k: v.clone() for k, v in state.items()}
    m = torch.as_tensor(mean, dtype=torch.float64)
    s = torch.as_tensor(std, dtype=torch.float64)
    w_in, b_in = state["encoder.0.weight"].double(), state["encoder.0.bias"].double()
    out["encoder.0.weight"] = (w_in / s).float()
    out["encoder.0.bias"] = (b_in - w_in @ (m / s)).float()
    w_out, b_out = state["decoder.4.weight"].double(), state["decoder.4.bias"].double()
    out["decoder.4.weight"] = (w_out * s[:, None]).float()
    out["decoder.4.bias"] = (b_out * s + m).float()
    return out


@torch.no_grad()
def _check_fold(model: AdapterWorldModel, folded: dict[str, torch.Tensor], dataset: Dataset,
                mean: np.ndarray, std: np.ndarray) -> None:
    """The folded model on raw observations == the trained one on standardized ones."""
    raw = _new_model_like(model)
    raw.load_state_dict(folded)
    obs = torch.from_numpy(dataset.states[:256])
    acts = torch.from_numpy(dataset.actions[np.arange(256) % len(dataset.actions)])
    mean_t, std_t = torch.from_numpy(mean.astype(np.float32)), torch.from_numpy(std.astype(np.float32))
    want = model.predict((obs - mean_t) / std_t, acts) * std_t + mean_t
    got = raw.predict(obs, acts)
    # float32 rounding of the folded weights, relative to each dimension's spread.
    err = float(((got - want).abs() / std_t).max())
    if err > 1e-3:
        raise AssertionError(f"folding the standardization changed the model by {err:.2e} std")


def _new_model_like(model: AdapterWorldModel) -> AdapterWorldModel:
    return AdapterWorldModel(model.arch).eval()


def train(cfg: TrainConfig, dataset: Dataset, snapshot_steps: list[int], log_every: int = 500
          ) -> dict[int, tuple[dict[str, Any], float, float]]:
    """Train one model; returns {step: (raw-observation state dict, mean total loss over the
    last 50 updates, seconds of training so far)}.

    The network trains on observations standardized with the training states'
    mean and std (without it, the 1M encoder barely learns cartpole's
    low-variance inputs in thousands of steps); each snapshot has the
    standardization folded into its first and last layers (:func:`fold_normalization`).
    """
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = _new_model(cfg.task)
    model.train()
    mean = dataset.states.astype(np.float64).mean(axis=0)
    std = dataset.states.astype(np.float64).std(axis=0)
    states_n = ((dataset.states - mean) / std).astype(np.float32)
    successors_n = ((dataset.successors - mean) / std).astype(np.float32)
    centred = successors_n - successors_n.mean(axis=1, keepdims=True)
    data = {
        "states": torch.from_numpy(states_n),
        "successors": torch.from_numpy(successors_n),
        "actions": torch.from_numpy(dataset.actions),
        "segments": torch.from_numpy(dataset.segments),
        "segment_actions": torch.from_numpy(dataset.segment_actions),
        "w": torch.from_numpy(np.full(states_n.shape[1], 1.0 / states_n.shape[1], np.float32)),
        "c": torch.from_numpy(_inverse_variance(centred, CONTRAST_VAR_FLOOR)),
    }
    optim = torch.optim.Adam(model.parameters(), lr=LR)
    total_steps = max(snapshot_steps)
    recent: list[float] = []
    snapshots: dict[int, tuple[dict[str, Any], float, float]] = {}
    t0 = time.perf_counter()
    for step in range(1, total_steps + 1):
        lr = LR_MIN + 0.5 * (LR - LR_MIN) * (1 + math.cos(math.pi * (step - 1) / total_steps))
        for group in optim.param_groups:
            group["lr"] = lr
        s_idx = torch.from_numpy(rng.integers(0, len(dataset.states), cfg.batch_states))
        seg_idx = torch.from_numpy(rng.integers(0, len(dataset.segments), cfg.batch_rollouts))
        terms = _losses(model, data, s_idx, seg_idx)
        loss = sum(LOSS_WEIGHTS[k] * v for k, v in terms.items())
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        optim.step()
        recent = (recent + [float(loss.detach())])[-50:]
        if step % log_every == 0 or step in snapshot_steps:
            detail = " ".join(f"{k} {float(v.detach()):.4g}" for k, v in terms.items())
            print(f"  [{cfg.task}] step {step}/{total_steps} loss {np.mean(recent):.4g} ({detail}) "
                  f"{time.perf_counter() - t0:.1f} s", flush=True)
        if step in snapshot_steps:
            folded = fold_normalization(model.state_dict(), mean, std)
            _check_fold(model, folded, dataset, mean, std)
            snapshots[step] = (folded, float(np.mean(recent)), time.perf_counter() - t0)
    return snapshots


# --------------------------------------------------------------------------- #
# Saving, converting, measuring
# --------------------------------------------------------------------------- #


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _action_kwargs(task: str) -> dict[str, Any]:
    actions = R.default_actions(task)
    if len(actions[0]) == 1:
        return {"action_levels": [a[0] for a in actions]}
    return {"action_set": [list(a) for a in actions]}


def save_and_measure(cfg: TrainConfig, quality: str, state: dict[str, Any], steps: int, loss: float,
                     train_time: float, out_dir: Path) -> dict[str, Any]:
    model = _new_model(cfg.task)
    model.load_state_dict(state)
    model.eval()
    stem = f"{cfg.task}-{quality}"
    pt, converted = out_dir / f"{stem}.pt", out_dir / f"{stem}.safetensors"
    meta = {
        "task": cfg.task,
        "quality": quality,
        "frame_skip": 1,
        "training_steps": steps,
        "tdmpc2_model_size": MODEL_SIZE,
        "seed": cfg.seed,
        "final_train_loss": loss,
        "trained_by": "wmel_jax.examples.train_examples",
    }
    save_adapter(model, pt, meta=meta, **_action_kwargs(cfg.task))
    convert_checkpoint(pt, converted, force=True)
    ref = R.run_reference(pt, cfg.task, **EVAL)
    m3 = ref["m3_action_agreement"]
    print(f"  {stem}: M1 {ref['m1_l2_onestep']:.5f}  M2 {ref['m2_l2_kstep']:.5f}  "
          f"M3 {'null' if m3 is None else f'{m3:+.4f}'}  (reference path {ref['timings']['total_s']:.2f} s)",
          flush=True)
    return {
        "task": cfg.task,
        "quality": quality,
        "pt": pt.name,
        "converted": converted.name,
        "sha256": _sha256(pt),
        "size_bytes": {"pt": pt.stat().st_size, "converted": converted.stat().st_size},
        "frame_skip": 1,
        "tdmpc2_model_size": MODEL_SIZE,
        "training_steps": steps,
        "seed": cfg.seed,
        "final_train_loss": loss,
        "train_time_s": train_time,
        "reference": {
            **EVAL,
            "m1_l2_onestep": ref["m1_l2_onestep"],
            "m2_l2_kstep": ref["m2_l2_kstep"],
            "m2_curve": ref["m2_curve"],
            "m3_action_agreement": m3,
            "m3_states_used": ref["m3_states_used"],
            "wall_time_s": ref["timings"]["total_s"],
            "metrics_time_s": ref["timings"]["metrics_s"],
        },
    }


def identity_baseline(task: str) -> dict[str, Any]:
    """The reference metrics of copying the state (``model(s, a) = s``) at ``EVAL``: a scale for M1/M2.

    Its M3 is null: its scores do not depend on the action.
    """
    oracle_step, score, actions = R.dm_control_oracle(task)
    states = R.collect_states(task, EVAL["n_states"], EVAL["seed"], actions=actions)
    sequence = R.reference_action_sequence(actions, EVAL["k_steps"], EVAL["seed"])
    got = R.reference_metrics(states, actions, sequence, oracle_step, lambda s, a: tuple(s), score)
    return {k: got[k] for k in ("m1_l2_onestep", "m2_l2_kstep", "m3_action_agreement")}


# --------------------------------------------------------------------------- #
# DreamerV3 (NM512/dreamerv3-torch's world model, through the torch mirror)
# --------------------------------------------------------------------------- #


@dataclasses.dataclass(frozen=True)
class DreamerConfig:
    """The shipped DreamerV3 example's run."""

    task: str = "cartpole-swingup"
    seed: int = 4
    sizes: tuple = (("stoch", 4), ("discrete", 32), ("deter", 64), ("hidden", 64), ("units", 64),
                    ("enc_layers", 2), ("enc_units", 128), ("dec_layers", 2), ("dec_units", 128))
    episodes: int = 400  # of 25 steps from the task's reset
    episode_len: int = 25
    seq_len: int = 16
    batch: int = 16
    steps: int = 3000
    lr: float = 3e-4


DREAMER = DreamerConfig()
#: upstream's world-model loss: KL balancing (dyn_scale, rep_scale) and free nats (kl_free); grad_clip.
DREAMER_KL = {"dyn_scale": 0.5, "rep_scale": 0.1, "kl_free": 1.0}
DREAMER_GRAD_CLIP = 1000.0


def dreamer_episodes(cfg: DreamerConfig) -> dict[str, np.ndarray]:
    """Random-action episodes: obs (E, L, D), action (E, L, ad) leading to each obs (0 at the reset),
    reward (E, L) of the transition into each obs (0 at the reset)."""
    actions = R.default_actions(cfg.task)
    rng = np.random.default_rng(cfg.seed)
    env = R.make_env(cfg.task, 1000 + cfg.seed)
    obs = np.zeros((cfg.episodes, cfg.episode_len, KNOWN_TASK_DIMS[cfg.task][0]), np.float32)
    act = np.zeros((cfg.episodes, cfg.episode_len, KNOWN_TASK_DIMS[cfg.task][1]), np.float32)
    rew = np.zeros((cfg.episodes, cfg.episode_len), np.float32)
    for e in range(cfg.episodes):
        obs[e, 0] = R.flatten_observation(env.reset().observation)
        for t in range(1, cfg.episode_len):
            a = np.asarray(actions[rng.integers(len(actions))], np.float32)
            ts = env.step(a)
            obs[e, t], act[e, t], rew[e, t] = R.flatten_observation(ts.observation), a, float(ts.reward)
    return {"obs": obs, "action": act, "reward": rew}


def _kl(p_logit: torch.Tensor, q_logit: torch.Tensor, unimix: float) -> torch.Tensor:
    """KL(p || q) of the unimix-mixed categoricals, summed over the groups: (..., S, C) -> (...)."""
    lp, lq = DT._mixed_logits(p_logit, unimix), DT._mixed_logits(q_logit, unimix)
    return (lp.exp() * (lp - lq)).sum(-1).sum(-1)


def _two_hot_log_loss(logits: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """upstream's DiscDist.log_prob, negated: two-hot of symlog(value) over the 255 buckets."""
    buckets = torch.linspace(DT.REWARD_LOW, DT.REWARD_HIGH, DT.REWARD_BINS)
    x = DT.symlog(value)
    below = (buckets <= x[..., None]).sum(-1).clamp(1, DT.REWARD_BINS) - 1
    above = (DT.REWARD_BINS - (buckets > x[..., None]).sum(-1)).clamp(0, DT.REWARD_BINS - 1)
    equal = below == above
    to_below = torch.where(equal, torch.ones_like(x), (buckets[below] - x).abs())
    to_above = torch.where(equal, torch.ones_like(x), (buckets[above] - x).abs())
    total = to_below + to_above
    target = (torch.nn.functional.one_hot(below, DT.REWARD_BINS) * (to_above / total)[..., None]
              + torch.nn.functional.one_hot(above, DT.REWARD_BINS) * (to_below / total)[..., None])
    return -(target * torch.log_softmax(logits, -1)).sum(-1)


def dreamer_losses(wm: DT.WorldModel, batch: dict[str, torch.Tensor], generator: torch.Generator
                   ) -> dict[str, torch.Tensor]:
    """upstream's WorldModel._train loss terms on a batch of chunks (B, T, ...), the first step a first frame."""
    cfg = wm.cfg
    embed = wm.encoder(batch["obs"])
    post, posts, priors = None, [], []
    for t in range(embed.shape[1]):
        post, prior = wm.dynamics.obs_step(post, None if t == 0 else batch["action"][:, t], embed[:, t],
                                           sample=True, generator=generator)
        posts.append(post)
        priors.append(prior)
    stack = lambda states, k: torch.stack([s[k] for s in states], 1)  # noqa: E731
    feat = torch.cat([stack(posts, "stoch").flatten(-2), stack(posts, "deter")], -1)
    heads = wm.heads["decoder"](feat)
    start = 0
    decoder = 0.0
    for key, width in cfg.obs_shapes:
        target = DT.symlog(batch["obs"][..., start:start + width])
        decoder = decoder + ((heads[key] - target) ** 2).sum(-1)
        start += width
    post_logit, prior_logit = stack(posts, "logit"), stack(priors, "logit")
    dyn = _kl(post_logit.detach(), prior_logit, cfg.unimix).clamp(min=DREAMER_KL["kl_free"])
    rep = _kl(post_logit, prior_logit.detach(), cfg.unimix).clamp(min=DREAMER_KL["kl_free"])
    cont_logit = wm.heads["cont"](feat)[..., 0]
    return {
        "decoder": decoder.mean(),
        "reward": _two_hot_log_loss(wm.heads["reward"](feat), batch["reward"]).mean(),
        "cont": torch.nn.functional.binary_cross_entropy_with_logits(cont_logit, torch.ones_like(cont_logit)),
        "kl": (DREAMER_KL["dyn_scale"] * dyn + DREAMER_KL["rep_scale"] * rep).mean(),
    }


def train_dreamer(cfg: DreamerConfig, data: dict[str, np.ndarray], log_every: int = 500
                  ) -> tuple[DT.WorldModel, float, float]:
    """(trained world model, mean loss over the last 50 updates, training seconds)."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    wm = DT.WorldModel(DT.config_for(cfg.task, **dict(cfg.sizes)))  # torch's default init, seeded
    wm.train()
    optim = torch.optim.Adam(wm.parameters(), lr=cfg.lr, eps=1e-8)
    tensors = {k: torch.from_numpy(v) for k, v in data.items()}
    recent: list[float] = []
    t0 = time.perf_counter()
    for step in range(1, cfg.steps + 1):
        ep = rng.integers(0, cfg.episodes, cfg.batch)
        start = rng.integers(0, cfg.episode_len - cfg.seq_len + 1, cfg.batch)
        idx = torch.from_numpy(start[:, None] + np.arange(cfg.seq_len)[None])
        ep_t = torch.from_numpy(ep)[:, None]
        batch = {k: v[ep_t, idx] for k, v in tensors.items()}
        terms = dreamer_losses(wm, batch, gen)
        loss = sum(terms.values())
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(wm.parameters(), DREAMER_GRAD_CLIP)
        optim.step()
        recent = (recent + [float(loss.detach())])[-50:]
        if step % log_every == 0 or step == cfg.steps:
            detail = " ".join(f"{k} {float(v.detach()):.4g}" for k, v in terms.items())
            print(f"  [dreamerv3 {cfg.task}] step {step}/{cfg.steps} loss {np.mean(recent):.4g} ({detail}) "
                  f"{time.perf_counter() - t0:.1f} s", flush=True)
    return wm.eval(), float(np.mean(recent)), time.perf_counter() - t0


def save_and_measure_dreamer(cfg: DreamerConfig, wm: DT.WorldModel, loss: float, train_time: float,
                             data_time: float, out_dir: Path) -> dict[str, Any]:
    stem = f"{cfg.task}-dreamerv3"
    pt, converted = out_dir / f"{stem}.pt", out_dir / f"{stem}.safetensors"
    DT.save_agent(wm, pt, optimizer_states=False)
    convert_checkpoint(pt, converted, frame_skip=1, force=True)
    ref = R.run_reference_dreamer(pt, cfg.task, frame_skip=1, **EVAL)
    m3 = ref["m3_action_agreement"]
    print(f"  {stem}: M1 {ref['m1_l2_onestep']:.5f}  M2 {ref['m2_l2_kstep']:.5f}  "
          f"M3 {'null' if m3 is None else f'{m3:+.4f}'}  latent mismatch {ref['m1_latent_onestep']:.4f}  "
          f"reward tau {ref['reward_rank_agreement']}  (reference path {ref['timings']['total_s']:.2f} s)", flush=True)
    keys = ("m1_l2_onestep", "m2_l2_kstep", "m2_curve", "m3_action_agreement", "m3_states_used")
    return {
        "task": cfg.task,
        "quality": "dreamerv3",
        "family": "dreamerv3",
        "pt": pt.name,
        "converted": converted.name,
        "sha256": _sha256(pt),
        "size_bytes": {"pt": pt.stat().st_size, "converted": converted.stat().st_size},
        "frame_skip": 1,
        "convert": {"frame_skip": 1},
        "architecture": dict(cfg.sizes),
        "training_steps": cfg.steps,
        "seed": cfg.seed,
        "episodes": cfg.episodes,
        "final_train_loss": loss,
        "train_time_s": train_time,
        "data_time_s": data_time,
        "reference": {
            **EVAL,
            **{k: ref[k] for k in keys},
            "m1_latent_mismatch_onestep": ref["m1_latent_onestep"],
            "m2_latent_mismatch_kstep": ref["m2_latent_kstep"],
            "m2_latent_mismatch_curve": ref["m2_latent_curve"],
            "reward_rank_agreement": ref["reward_rank_agreement"],
            "reward_rank_states_used": ref["reward_rank_states_used"],
            "wall_time_s": ref["timings"]["total_s"],
            "metrics_time_s": ref["timings"]["metrics_s"] + ref["timings"]["latent_s"],
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m wmel_jax.examples.train_examples", description=__doc__.split("\n")[0])
    p.add_argument("--tasks", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--families", nargs="+", default=["tdmpc2", "dreamerv3"], choices=["tdmpc2", "dreamerv3"],
                   help="which examples to (re)train; the manifest keeps the other families' entries")
    p.add_argument("--out", type=Path, default=EXAMPLES_DIR, help="output folder (default: the package's examples/)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (results depend on it; default 1)")
    p.add_argument("--good-steps", type=int, default=None, help="override every task's good_steps (trials)")
    p.add_argument("--weak-steps", type=int, default=None, help="override every task's weak_steps (trials)")
    p.add_argument("--dreamer-steps", type=int, default=None, help="override the DreamerV3 example's steps (trials)")
    args = p.parse_args(argv)
    trial = args.good_steps or args.weak_steps or args.dreamer_steps
    if trial and args.out.resolve() == EXAMPLES_DIR:
        p.error("--good-steps/--weak-steps/--dreamer-steps are for trials: pass --out DIR so the shipped models stay")
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    entries = []
    t_all = time.perf_counter()
    for task in args.tasks if "tdmpc2" in args.families else []:
        cfg = CONFIGS[task]
        if args.good_steps or args.weak_steps:
            cfg = dataclasses.replace(cfg, good_steps=args.good_steps or cfg.good_steps,
                                      weak_steps=args.weak_steps or cfg.weak_steps)
        t0 = time.perf_counter()
        dataset = make_dataset(cfg)
        t_data = time.perf_counter() - t0
        print(f"{task}: {len(dataset.states)} states x {len(dataset.actions)} actions, "
              f"{len(dataset.segments)} rollout segments ({t_data:.1f} s)", flush=True)
        snapshots = train(cfg, dataset, [cfg.weak_steps, cfg.good_steps])
        for quality, steps in (("weak", cfg.weak_steps), ("good", cfg.good_steps)):
            state, loss, train_time = snapshots[steps]
            entry = save_and_measure(cfg, quality, state, steps, loss, train_time, args.out)
            entry["data_time_s"] = t_data
            entries.append(entry)
    if "dreamerv3" in args.families and DREAMER.task in args.tasks:
        cfg = DREAMER if not args.dreamer_steps else dataclasses.replace(DREAMER, steps=args.dreamer_steps)
        t0 = time.perf_counter()
        data = dreamer_episodes(cfg)
        t_data = time.perf_counter() - t0
        print(f"dreamerv3 {cfg.task}: {cfg.episodes} episodes x {cfg.episode_len} steps ({t_data:.1f} s)", flush=True)
        wm, loss, train_time = train_dreamer(cfg, data)
        entries.append(save_and_measure_dreamer(cfg, wm, loss, train_time, t_data, args.out))
    # Entries this run did not retrain are kept from the existing manifest (same folder).
    previous = args.out / MANIFEST_NAME
    old = {}
    if previous.is_file():
        import json

        old = json.loads(previous.read_text())
    made = {(e["task"], e["quality"]) for e in entries}
    kept = [e for e in old.get("models", []) if (e["task"], e["quality"]) not in made]
    order = {(t, q): i for i, (t, q) in enumerate((t, q) for t in CONFIGS for q in ("weak", "good", "dreamerv3"))}
    models = sorted(kept + entries, key=lambda e: order.get((e["task"], e["quality"]), len(order)))
    baselines = dict(old.get("identity_baseline", {}))
    baselines.update({task: identity_baseline(task) for task in args.tasks})
    manifest = {
        "description": "Example world models trained by wmel_jax/examples/train_examples.py on dm_control "
                       "transitions: TD-MPC2-architecture models (adapter schema, 1M layout), a good and a weak "
                       "one per task, and one small NM512/dreamerv3-torch DreamerV3 model for cartpole-swingup",
        "generated_by": "python -m wmel_jax.examples.train_examples",
        "torch": torch.__version__,
        "threads": args.threads,
        "loss_weights": LOSS_WEIGHTS,
        "dreamerv3_loss": {**DREAMER_KL, "grad_clip": DREAMER_GRAD_CLIP, "lr": DREAMER.lr},
        "reference_eval": EVAL,
        "identity_baseline": baselines,
        "models": models,
        "total_time_s": time.perf_counter() - t_all,
    }
    from wmel_jax.fileio import write_json

    write_json(args.out / MANIFEST_NAME, manifest)
    total = sum(e["size_bytes"]["pt"] + e["size_bytes"]["converted"] for e in entries)
    print(f"wrote {len(entries)} models ({total / 1e6:.1f} MB) and {args.out / MANIFEST_NAME} "
          f"in {manifest['total_time_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
