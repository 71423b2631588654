"""DreamerV3: the flax RSSM against the torch mirror, the metrics against the per-sample reference path.

Each model is built with the project's torch mirror of NM512/dreamerv3-torch
(``converters/dreamerv3_torch.py``, randomized so no head is trivial), saved
as upstream's dreamer.py saves ``latest.pt``, converted and loaded. Two small
sizes (one with upstream's 32 classes and defaults; one needing a config:
4 classes, ELU, no unimix, zero initial state, the torch.compile prefix) and
the reference's size (32x32 latents, deter 512, hidden 512, 5 x 1024 MLPs).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import wmel_jax
from wmel_jax import evaluate
from wmel_jax.benchmarks.reference import run_reference_dreamer
from wmel_jax.converters import dreamerv3_torch as T
from wmel_jax.converters.convert import convert_checkpoint
from wmel_jax.model import dreamerv3 as D
from wmel_jax.model.protocol import functions_of

from conftest import EVAL_CHUNK, EVAL_K, EVAL_N, eval_cli, small_eval_args

# Tolerances (max abs difference, float32 on both sides).
#: Decoded observations, one-step and along k-step chains (the issue's 1e-5). Measured at the
#: reference size: 6.4e-6 (two float32 implementations, each ~4e-6 from float64, symexp amplifying).
OBS_ATOL = 1e-5
#: The recurrent state (tanh outputs).
DETER_ATOL = 1e-5
#: Reward values: symexp of a softmax-weighted mean of 255 buckets in [-20, 20].
REWARD_ATOL = 5e-5
#: Metrics against the per-sample reference (as the TD-MPC2 parity): M1 and the M2 curve relative,
#: M3 and the reward ranking absolute; the latent mismatch fractions absolute: one latent group
#: flipped by a near-tie in one (state, action) pair moves them by 1 / (groups N A) < 1e-3.
L2_RTOL = 1e-4
RANK_ATOL = 0.005
MISMATCH_ATOL = 1e-3


@dataclasses.dataclass
class Case:
    name: str
    task: str
    sizes: dict
    config: str | None = None  # --dreamer-config text
    given: dict = dataclasses.field(default_factory=dict)  # the same, for the reference path's mirror
    compiled: bool = False


CASES = {
    "small": Case("small", "cartpole-swingup", dict(stoch=4, discrete=32, deter=32, hidden=32, units=32,
                                                     enc_layers=2, enc_units=64, dec_layers=2, dec_units=64)),
    "odd": Case("odd", "reacher-easy", dict(stoch=6, discrete=4, deter=24, hidden=16, units=24, enc_layers=3,
                                             enc_units=40, dec_layers=1, dec_units=48, act="ELU", unimix=0.0,
                                             initial="zeros"),
                config="dyn_discrete: 4\nact: ELU\nunimix_ratio: 0.0\nencoder: {act: ELU}\ndecoder: {act: ELU}\n"
                       "action_repeat: 1\n",
                given=dict(discrete=4, act="ELU", unimix=0.0), compiled=True),
    "reference": Case("reference", "cartpole-swingup", dict(
        stoch=32, discrete=32, deter=512, hidden=512, units=512, enc_layers=5, enc_units=1024, dec_layers=5,
        dec_units=1024)),
}


@dataclasses.dataclass
class Built:
    case: Case
    torch_model: T.WorldModel
    pt: Path
    converted: Path


class _Models:
    def __init__(self, root: Path):
        self.root, self.built = root, {}

    def get(self, name: str, seed: int = 0) -> Built:
        if (name, seed) not in self.built:
            case = CASES[name]
            folder = self.root / f"{name}-{seed}"
            folder.mkdir()
            model = T.build_world_model(T.config_for(case.task, **case.sizes), seed=seed)
            pt = T.save_agent(model, folder / "latest.pt", compiled=case.compiled,
                              optimizer_states=name != "reference")  # the reference size: ~60 MB without them
            config = None
            if case.config:
                config = folder / "run.yaml"
                config.write_text(case.config)
            converted = convert_checkpoint(pt, folder / "model.safetensors", frame_skip=1, dreamer_config=config)
            self.built[name, seed] = Built(case, model, pt, converted)
        return self.built[name, seed]


@pytest.fixture(scope="session")
def dreamers(tmp_path_factory) -> _Models:
    return _Models(tmp_path_factory.mktemp("dreamers"))


def _torch_chain(model: T.WorldModel, obs: np.ndarray, actions: np.ndarray):
    """The Markovian projection iterated (k, N, obs_dim), and the one-step quantities, by the mirror."""
    with torch.no_grad():
        o = torch.as_tensor(obs, dtype=torch.float32)
        z = model.encode(o)
        traj = []
        for a in actions:
            o = model.markovian_step(o, torch.as_tensor(np.broadcast_to(a, (len(obs), a.shape[-1])).copy()))
            traj.append(o.numpy())
    return z, np.stack(traj)


def _states(task: str, n: int, seed: int) -> np.ndarray:
    """n random observations and n states the task visits (the suite's shared sampling shape)."""
    problem = evaluate.make_problem(task, n_states=EVAL_N, k_steps=EVAL_K, seed=seed)
    rng = np.random.default_rng(seed)
    random = 1.5 * rng.standard_normal((n, problem.states.shape[1]))
    visited = problem.states[rng.choice(EVAL_N, n, replace=False)]
    return np.concatenate([random, visited]).astype(np.float32), problem


def _one_step(arch, params, obs, actions):
    """Everything one step gives, in one program: posterior, prior, projection, reward, continuation."""
    fns = functions_of(arch)
    z = fns.encode(params, None, obs)
    prior = fns.latent_step(params, None, z, actions)
    return {"z": z, "prior": prior, "next": fns.decode(params, None, prior),
            "reward": fns.reward(params, None, z, actions, prior),
            "cont": D._apply(arch, params, "continuation", prior)}


@pytest.mark.parametrize("name", ["small", pytest.param("odd", marks=pytest.mark.slow),
                                  pytest.param("reference", marks=pytest.mark.slow)])
def test_projections_and_chains_match_torch(dreamers, name):
    built = dreamers.get(name)
    model, mirror = wmel_jax.load(built.converted), built.torch_model
    assert isinstance(model, D.DreamerV3Model) and model.frame_skip == 1
    obs, problem = _states(built.case.task, 8, seed=1)
    actions = problem.actions.astype(np.float32)
    # One step, every action: the Markovian projection, the latents, the reward and continuation heads.
    rows = np.repeat(obs, len(actions), 0)
    acts = np.tile(actions, (len(obs), 1))
    with torch.no_grad():
        z = mirror.encode(torch.as_tensor(rows))
        prior = mirror.latent_step(z, torch.as_tensor(acts))
        want = {"next": mirror.decode(prior).numpy(), "reward": mirror.reward(prior).numpy(),
                "cont": torch.sigmoid(mirror.heads["cont"](mirror.dynamics.get_feat(prior))[..., 0]).numpy()}
    step = jax.jit(_one_step, static_argnums=0, compiler_options=D.xla_options() or None)
    got = step(model.arch, model.params, rows, acts)
    np.testing.assert_array_equal(np.asarray(got["z"]["stoch"]), z["stoch"].reshape(len(rows), -1).numpy(),
                                  err_msg="posterior latents differ")
    np.testing.assert_allclose(np.asarray(got["z"]["deter"]), z["deter"].numpy(), atol=DETER_ATOL, rtol=0)
    np.testing.assert_array_equal(np.asarray(got["prior"]["stoch"]), prior["stoch"].reshape(len(rows), -1).numpy(),
                                  err_msg="prior latents differ")
    np.testing.assert_allclose(np.asarray(got["next"]), want["next"], atol=OBS_ATOL, rtol=0, err_msg="projection")
    np.testing.assert_allclose(np.asarray(got["reward"]), want["reward"], atol=REWARD_ATOL, rtol=0)
    np.testing.assert_allclose(np.asarray(got["cont"]), want["cont"], atol=DETER_ATOL, rtol=0)
    # k-step chains, each prediction re-projected (as M2 and the planners feed the model): the same program
    # (one compilation), every row of the one-step batch a chain start.
    _, traj = _torch_chain(mirror, rows, problem.action_sequence.astype(np.float32))
    o = rows
    for t, a in enumerate(problem.action_sequence.astype(np.float32)):
        o = np.asarray(step(model.arch, model.params, o, np.broadcast_to(a, acts.shape).copy())["next"])
        np.testing.assert_allclose(o, traj[t], atol=OBS_ATOL, rtol=0, err_msg=f"chain step {t + 1}")


def _check_against_reference(ours: dict, ref: dict) -> None:
    np.testing.assert_allclose(ours["m1_l2_onestep"], ref["m1_l2_onestep"], rtol=L2_RTOL, err_msg="M1")
    np.testing.assert_allclose(ours["m2_curve"], ref["m2_curve"], rtol=L2_RTOL, err_msg="M2 curve")
    for ours_key, ref_key, used in (("m3_action_agreement", "m3_action_agreement", "m3_states_used"),
                                    ("reward_rank_agreement", "reward_rank_agreement", "reward_rank_states_used")):
        if ref[ref_key] is None:
            assert ours[ours_key] is None, ours_key
        else:
            assert ours[ours_key] == pytest.approx(ref[ref_key], abs=RANK_ATOL), ours_key
        assert ours[used] == ref[used], used
    np.testing.assert_allclose(ours["m1_latent_mismatch_onestep"], ref["m1_latent_onestep"], atol=MISMATCH_ATOL)
    np.testing.assert_allclose(ours["m2_latent_mismatch_curve"], ref["m2_latent_curve"], atol=MISMATCH_ATOL)


#: The per-sample reference path is batch-of-1 torch and dm_control: the suite compares the kernel's
#: per-episode sums of the suite's shared problem (its oracle compiled once for the session) on its first
#: episode (states 0-24) with the reference on those states; the slow tests compare all 150.
PARITY_EPISODE = 0


def _episode_metrics(sums: dict, e: int) -> dict:
    """The kernel's metrics of episode ``e`` from :func:`evaluate.model_episode_sums`' output."""
    def mean(name):
        total, count = np.asarray(sums[name].total[e]), int(sums[name].count[e])
        return (total / count if count else None), count

    m3, m3_used = mean("m3")
    rank, rank_used = mean("reward_rank")
    return {"m1_l2_onestep": mean("m1")[0], "m2_curve": mean("m2")[0], "m3_action_agreement": m3,
            "m3_states_used": m3_used, "reward_rank_agreement": rank, "reward_rank_states_used": rank_used,
            "m1_latent_mismatch_onestep": mean("m1_latent")[0], "m2_latent_mismatch_curve": mean("m2_latent")[0]}


def _kernel_and_reference(built: Built, whole: bool = False):
    """(our metrics, the reference's, problem, targets, our model_metrics output) on the suite's shared problem.

    ``whole``: all 150 states; else the first episode's (per-episode sums), the reference on those states.
    """
    model = wmel_jax.load(built.converted)
    problem = evaluate.make_problem(built.case.task, n_states=EVAL_N, k_steps=EVAL_K, seed=0)
    targets = evaluate.oracle_targets(problem, EVAL_CHUNK)
    # total_states as the CLI passes it for one model: the eval test below reuses this compilation.
    full, _ = evaluate.model_metrics(model, problem, targets, EVAL_CHUNK, total_states=EVAL_N)
    if whole:
        ours, states = full, problem.states
    else:
        sums, _ = evaluate.model_episode_sums(model, problem, targets, EVAL_CHUNK, total_states=EVAL_N)
        ours = _episode_metrics(sums, PARITY_EPISODE)
        states = problem.states[problem.episode_index == PARITY_EPISODE]
    ref = run_reference_dreamer(built.pt, built.case.task, states=states,
                                action_sequence=problem.action_sequence, frame_skip=1, **built.case.given)
    return ours, ref, problem, targets, full


@pytest.mark.parametrize("name", ["small", pytest.param("odd", marks=pytest.mark.slow)])
def test_metrics_match_the_per_sample_reference(dreamers, name):
    ours, ref, problem, targets, full = _kernel_and_reference(dreamers.get(name))
    _check_against_reference(ours, ref)
    # DreamerV3's latent metrics are its own fields; TD-MPC2's L2 fields are not reported for it.
    assert "m1_latent_onestep" not in full and "unavailable" not in full
    assert 0 <= full["m1_latent_mismatch_onestep"] <= 1 and len(full["m2_latent_mismatch_curve"]) == EVAL_K
    if name == "small":
        # Another checkpoint of the architecture reuses the compiled kernel.
        other = wmel_jax.load(dreamers.get("small", seed=1).converted)
        timings = evaluate.model_metrics(other, problem, targets, EVAL_CHUNK, total_states=EVAL_N)[1]
        assert timings["model_compile_s"] == 0.0


@pytest.mark.slow
def test_reference_size_metrics_match_the_per_sample_reference(dreamers):
    """The reference's size at the suite's shape (N = 150): minutes of batch-of-1 torch calls."""
    ours, ref, *_ = _kernel_and_reference(dreamers.get("reference"), whole=True)
    _check_against_reference(ours, ref)


def test_eval_a_dreamer_and_a_tdmpc2_model_in_one_run(tmp_path, capsys, dreamers, checkpoints):
    dreamer = str(dreamers.get("small").converted)
    tdmpc2 = str(checkpoints.adapter(1, obs_dim=5, action_dim=1, seed=0).converted)
    report = tmp_path / "r.json"
    code, out, err = eval_cli(dreamer, tdmpc2, *small_eval_args("-o", report), capsys=capsys)
    assert code == 0, err
    doc = json.loads(report.read_text())
    cells = {c["model"]: c for c in doc["cells"]}
    assert set(cells) == {dreamer, tdmpc2} and doc["skipped"] == []
    d, t = cells[dreamer], cells[tdmpc2]
    for cell in (d, t):
        assert cell["m1_l2_onestep"] > 0 and len(cell["m2_curve"]) == EVAL_K
    assert d["counts"]["reward_rank_states_used"] > 0 and "unavailable" not in d
    assert "m1_latent_onestep" not in d and "m1_latent_mismatch_onestep" not in t
    assert t["m1_latent_onestep"] > 0 and t["unavailable"] == {"reward_rank_agreement": "no reward head"}
    assert doc["metric_spaces"]["m1_latent_mismatch_onestep"] == "latent"
    assert "latent 1-step mismatch" in out and "another model family's metric" in out
    assert 0 <= d["m1_latent_mismatch_onestep"] <= 1 and len(d["m2_latent_mismatch_curve"]) == EVAL_K
    assert d["m1_latent_mismatch_onestep_ci"] is not None  # intervals for the family's own fields too


# --------------------------------------------------------------------------- #
# The pieces
# --------------------------------------------------------------------------- #


def test_categorical_mode_is_upstreams_on_near_ties():
    """unimix mixing can make two distinct logits equal; upstream's argmax then takes the first, as here."""
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((64, 3, 5)).astype(np.float32)
    logits[:, :, 2] = logits[:, :, 1] + np.float32(1e-7) * rng.integers(-2, 3, (64, 3))  # near and exact ties
    logits[:, :, 0] = -30.0  # probabilities that mix to the floor
    cfg = T.config_for("cartpole-swingup", stoch=3, discrete=5, deter=4, hidden=4, units=4, enc_layers=1,
                       enc_units=4, dec_layers=1, dec_units=4)
    rssm = T.RSSM(cfg, 4)
    with torch.no_grad():
        want = rssm.mode(torch.as_tensor(logits)).reshape(64, 15).numpy()
    got = np.asarray(jax.jit(D.categorical_mode, static_argnums=(1, 2, 3))(logits.reshape(64, 15), 3, 5, 0.01))
    np.testing.assert_array_equal(got, want)
    assert (got.reshape(64, 3, 5).sum(-1) == 1).all()


def test_categorical_mismatch_counts_groups_that_differ():
    arch = D.DreamerArch(("position", "velocity"), (3, 2), 1, stoch=4, classes=3, deter=2, hidden=2,
                         encoder_layers=1, encoder_units=2, decoder_layers=1, decoder_units=2)
    onehot = lambda idx: jax.nn.one_hot(jnp.asarray(idx), 3).reshape(len(idx), -1)  # noqa: E731
    a = {"deter": jnp.zeros((2, 2)), "stoch": onehot([[0, 1, 2, 0], [1, 1, 1, 1]])}
    b = {"deter": jnp.ones((2, 2)), "stoch": onehot([[0, 2, 2, 1], [1, 1, 1, 1]])}
    np.testing.assert_array_equal(D.categorical_mismatch(arch, a, b), [0.5, 0.0])  # deter is not compared


def test_a_converted_file_that_does_not_fit_its_architecture_is_refused(dreamers, tmp_path):
    from wmel_jax.errors import WmelError
    from wmel_jax.model.fileformat import read_model_file, write_model_file

    header, arch, flat = read_model_file(dreamers.get("small").converted)
    flat = dict(flat)
    flat["rssm/gru/linear/kernel"] = flat["rssm/gru/linear/kernel"][:-1]
    bad = tmp_path / "bad.safetensors"
    write_model_file(bad, flat, {k: v for k, v in header.items() if k != "format_version"})
    with pytest.raises(WmelError, match="does not match its own architecture.*rssm/gru/linear/kernel"):
        wmel_jax.load(bad)


def test_the_dreamer_kernel_is_keyed_by_its_architecture_for_the_persistent_cache(dreamers):
    """Its closure has a content key (so the traced program can be stored) that tells architectures apart."""
    from wmel_jax import kernel_cache
    from wmel_jax.oracle import make_oracle

    score = make_oracle("cartpole-swingup", frame_skip=1).physics.task.score
    arch = wmel_jax.load(dreamers.get("small").converted).arch
    key = json.dumps(kernel_cache.content_key(evaluate._model_kernel(arch, score, ("observation", "latent"))))
    other = dataclasses.replace(arch, deter=arch.deter * 2)
    assert key != json.dumps(kernel_cache.content_key(evaluate._model_kernel(other, score, ("observation", "latent"))))
    assert key == json.dumps(kernel_cache.content_key(evaluate._model_kernel(arch, score, ("observation", "latent"))))
