"""``wmel-jax eval`` end to end: the CLI, the report, chunking, reuse, and what bad input gets.

Parity of the numbers with the per-sample reference path is in
``tests/test_eval_parity.py``; this file pins the pipeline's behaviour. All
runs share the suite's one evaluation shape (conftest.EVAL_*: the last chunk
padded), so the kernels compile once for the session.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest

from wmel_jax import evaluate
from wmel_jax.errors import WmelError
from wmel_jax.pipeline import EvalOptions, run_eval

from conftest import EVAL_CHUNK as CHUNK
from conftest import EVAL_K as K
from conftest import EVAL_N as N
from conftest import PROGRESS_PREFIX, assert_eval_user_error, correlate_metric_keys, eval_cli, small_eval_args
from conftest import without_progress
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def cartpole_models(checkpoints) -> list[str]:
    """Two random size-1 adapter models with cartpole's widths (task inferred at conversion)."""
    return [str(checkpoints.adapter(1, obs_dim=5, action_dim=1, seed=s).converted) for s in (0, 1)]


@pytest.fixture(scope="module")
def upstream_model(checkpoints) -> str:
    """An upstream-schema model (no observation decoder) with cartpole's widths; frame_skip 2 (upstream's)."""
    return str(checkpoints.upstream(1, obs_dim=5, action_dim=1).converted)


@pytest.fixture(scope="module")
def reacher_model(checkpoints) -> str:
    return str(checkpoints.adapter(1, obs_dim=6, action_dim=2, seed=0).converted)


def _cpg(path: Path, gap, environment="dmc_cartpole_swingup") -> Path:
    doc = {"environment": environment, "seed": 0, "cpg": {"verdict": "INCONCLUSIVE"},
           "training": {"tdmpc2_model_size": 1}}
    if gap is not None:
        doc["cpg"]["gap"] = gap
    path.write_text(json.dumps(doc))
    return path


# --------------------------------------------------------------------------- #
# The main path
# --------------------------------------------------------------------------- #


def test_eval_writes_table_report_figure_and_states(tmp_path, capsys, cartpole_models):
    report, png, states = tmp_path / "report.json", tmp_path / "fig.png", tmp_path / "states.npy"
    downstream = [_cpg(tmp_path / f"cpg{i}.json", gap) for i, gap in enumerate((0.3, 0.8))]
    code, out, err = eval_cli(*cartpole_models, *small_eval_args("-o", report, "--figure", png, "--save-states", states,
                                                     "--downstream", *downstream), capsys=capsys)
    assert code == 0, err
    doc = json.loads(report.read_text())
    assert doc["config"]["env"] == "cartpole-swingup"
    assert doc["config"]["n_states"] == N and doc["config"]["k_steps"] == K
    assert len(doc["config"]["action_set"]) == 5 and len(doc["config"]["action_sequence"]) == K
    assert [c["model"] for c in doc["cells"]] == cartpole_models
    for cell, gap in zip(doc["cells"], (0.3, 0.8)):
        assert len(cell["m2_curve"]) == K and cell["m2_l2_kstep"] == cell["m2_curve"][-1]
        assert cell["m1_l2_onestep"] > 0 and cell["gap"] == gap
        assert cell["m3_action_agreement"] is None or -1 <= cell["m3_action_agreement"] <= 1
        # An adapter model has an encoder too: the latent metrics; no reward head: no reward ranking.
        assert len(cell["m2_latent_curve"]) == K and cell["m2_latent_kstep"] == cell["m2_latent_curve"][-1]
        assert cell["m1_latent_onestep"] > 0
        assert cell["reward_rank_agreement"] is None and cell["counts"]["reward_rank_states_used"] is None
        assert cell["unavailable"] == {"reward_rank_agreement": "no reward head"}
        # Every metric with its episode-bootstrap interval; counts nested (N = 150: 6 episodes of 25).
        assert cell["counts"]["n_states"] == N and cell["counts"]["n_episodes"] == 6
        for key in ("m1_l2_onestep", "m2_l2_kstep", "m1_latent_onestep", "m2_latent_kstep"):
            low, high = cell[f"{key}_ci"]
            assert low <= cell[key] <= high, key
        assert len(cell["m2_curve_ci"]) == K and cell["m2_curve_ci"][-1] == cell["m2_l2_kstep_ci"]
        assert cell["reward_rank_agreement_ci"] is None
        # The reference's correlate.py takes every top-level finite number but the gap and its
        # descriptors for a metric: read this way, a cell holds metrics only.
        assert correlate_metric_keys(doc["cells"]) <= set(evaluate.METRIC_SPACES)
    assert doc["config"]["n_episodes"] == 6 and doc["config"]["interval"]["unit"] == "episode"
    assert doc["metric_spaces"]["m1_latent_onestep"] == "latent"
    assert doc["metric_spaces"]["m3_action_agreement"] == "observation"
    assert doc["metric_spaces"]["reward_rank_agreement"] == "reward"
    assert doc["config"]["action_set_source"] == "the checkpoint's"
    assert doc["skipped"] == []
    assert doc["timings"]["compile_s"] >= 0 and doc["timings"]["run_s"] > 0
    for name in cartpole_models:
        assert name in out
    assert "latent 1-step L2" in out and "not available: reward tau-b: no reward head" in out
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    assert np.load(states, allow_pickle=False).shape == (N, 5)


def test_saved_states_rerun_exactly(tmp_path, cartpole_models):
    saved = tmp_path / "states.npy"
    first = run_eval(EvalOptions(cartpole_models[:1], n_states=N, k_steps=K, chunk_states=CHUNK,
                                 save_states=str(saved)))
    again = run_eval(EvalOptions(cartpole_models[:1], k_steps=K, chunk_states=CHUNK, states=str(saved)))
    assert again["cells"][0]["m1_l2_onestep"] == first["cells"][0]["m1_l2_onestep"]
    assert again["cells"][0]["m2_curve"] == first["cells"][0]["m2_curve"]
    assert again["cells"][0]["m3_action_agreement"] == first["cells"][0]["m3_action_agreement"]


def test_padded_oracle_chunks_give_the_same_targets(cartpole_models):
    """The last chunk is padded: its answers equal those of the same states in a full chunk."""
    problem = evaluate.make_problem("cartpole-swingup", n_states=N, k_steps=K)
    padded = evaluate.oracle_targets(problem, CHUNK)  # N states: the last chunk padded
    more = np.concatenate([problem.states, problem.states[: 2 * CHUNK - N][::-1]])
    full = evaluate.oracle_targets(dataclasses.replace(problem, states=more, episode_ids=None), CHUNK)  # two full chunks
    np.testing.assert_array_equal(padded.next_obs, full.next_obs[:N])
    np.testing.assert_array_equal(padded.scores, full.scores[:N])
    np.testing.assert_array_equal(padded.trajectory, full.trajectory[:, :N])


#: The model runs in float32, and XLA's CPU matmuls round differently for
#: different batch sizes (measured: predictions differ by up to 8e-8 between a
#: batch of 60 rows and its first 25), so metrics from different chunk sizes
#: agree to float32 rounding, not bit for bit.
CHUNK_RTOL = 1e-6
#: An interval end is a quantile over resamples: a float32-rounding difference in
#: two episodes' sums can swap the order of two nearly tied resamples, moving the
#: end to its neighbour (measured: 1.3e-6 relative on a latent curve step).
CHUNK_CI_RTOL = 1e-5


@pytest.mark.parametrize("chunk", [5, N])
def test_model_chunking_does_not_change_the_metrics(cartpole_models, chunk):
    import wmel_jax

    model = wmel_jax.load(cartpole_models[0])
    problem = evaluate.make_problem("cartpole-swingup", model.action_set, n_states=N, k_steps=K)
    targets = evaluate.oracle_targets(problem, CHUNK)
    reference = evaluate.model_metrics(model, problem, targets, CHUNK)[0]
    chunked = evaluate.model_metrics(model, problem, targets, chunk)[0]
    for key in ("m1_l2_onestep", "m2_curve", "m3_action_agreement", "m1_latent_onestep", "m2_latent_curve"):
        np.testing.assert_allclose(chunked[key], reference[key], rtol=CHUNK_RTOL, err_msg=key)
        # Chunks of 5 cut every episode of 25 into pieces: the host adds them up, the intervals agree.
        np.testing.assert_allclose(chunked[f"{key}_ci"], reference[f"{key}_ci"], rtol=CHUNK_CI_RTOL, err_msg=key)
    assert chunked["m3_states_used"] == reference["m3_states_used"]


def test_oracle_runs_once_for_many_models(monkeypatch, cartpole_models):
    from wmel_jax import pipeline

    calls = []
    real = pipeline.oracle_targets
    monkeypatch.setattr(pipeline, "oracle_targets", lambda *a, **k: calls.append(1) or real(*a, **k))
    report = run_eval(EvalOptions(cartpole_models * 2, n_states=N, k_steps=K, chunk_states=CHUNK))
    assert len(report["cells"]) == 4 and len(calls) == 1


def test_model_kernel_compiles_once_per_architecture(cartpole_models):
    import wmel_jax

    models = [wmel_jax.load(p) for p in cartpole_models]
    problem = evaluate.make_problem("cartpole-swingup", models[0].action_set, n_states=N, k_steps=K, seed=3)
    targets = evaluate.oracle_targets(problem, CHUNK)
    compiled = []
    for model in models:
        compiled.append(evaluate.model_metrics(model, problem, targets, CHUNK)[1]["model_compile_s"])
    assert compiled[1] == 0.0, "the second checkpoint of one architecture recompiled"


def test_one_bad_model_among_several_is_skipped(tmp_path, capsys, cartpole_models, reacher_model, upstream_model):
    report = tmp_path / "r.json"
    # --env: one task for all (without it, each model would be judged on its own task).
    code, out, err = eval_cli(cartpole_models[0], reacher_model, upstream_model, tmp_path / "missing.safetensors",
                           "--env", "cartpole-swingup", *small_eval_args("-o", report), capsys=capsys)
    # The report is written, but the exit status says a model was skipped (scripts notice).
    assert code == 1, err
    assert "3 model(s) skipped" in err and "--allow-skips" in err
    doc = json.loads(report.read_text())
    assert [c["model"] for c in doc["cells"]] == [cartpole_models[0]]
    reasons = {s["model"]: s["reason"] for s in doc["skipped"]}
    assert "reacher-easy" in reasons[reacher_model]
    # Decoder-less models are evaluated (latent metrics), but not mixed into a run of another action repeat.
    assert "frame_skip 2 differs from this run's 1" in reasons[upstream_model]
    assert "does not exist" in reasons[str(tmp_path / "missing.safetensors")]


# --------------------------------------------------------------------------- #
# Bad input: one line, exit 2, no partial output
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("array,match", [
    (np.zeros((4, 6)), "obs_dim=5"),
    (np.zeros(5), "2-D"),
    (np.array([[0, 1, 0, 0, 0], [0, 1, 0, np.nan, 0.0]]), "row 1"),
    (np.array([[0, 1, 0, 0, 0], [np.inf, 1, 0, 0, 0.0]]), "row 1"),
], ids=["wrong-width", "1-d", "nan", "inf"])
def test_bad_states_file(tmp_path, capsys, cartpole_models, array, match):
    np.save(tmp_path / "s.npy", array)
    assert_eval_user_error(capsys, tmp_path, cartpole_models[0], "--states", tmp_path / "s.npy", *small_eval_args("-o", tmp_path / "r.json"),
                       match=match)


def test_states_file_with_a_pickle_is_refused_not_run(tmp_path, capsys, cartpole_models):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    np.save(tmp_path / "s.npy", np.array([Payload()], dtype=object), allow_pickle=True)
    before = set(os.listdir(tmp_path))
    code, _, err = eval_cli(cartpole_models[0], "--states", tmp_path / "s.npy", *small_eval_args(), capsys=capsys)
    assert code == 2 and "not a plain numeric .npy" in err, err
    assert not marker.exists() and set(os.listdir(tmp_path)) == before


def test_action_sequence_of_the_wrong_width(tmp_path, capsys, cartpole_models):
    np.save(tmp_path / "seq.npy", np.zeros((K, 2)))
    assert_eval_user_error(capsys, tmp_path, cartpole_models[0], "--action-sequence", tmp_path / "seq.npy", *small_eval_args(),
                       match="action_dim=1")


def test_action_sequence_outside_the_actuator_range(tmp_path, capsys, cartpole_models):
    np.save(tmp_path / "seq.npy", np.full((K, 1), 3.0))
    assert_eval_user_error(capsys, tmp_path, cartpole_models[0], "--action-sequence", tmp_path / "seq.npy", *small_eval_args(),
                       match="outside the actuator range")


def test_model_whose_widths_do_not_fit_the_task(tmp_path, capsys, reacher_model):
    err = assert_eval_user_error(capsys, tmp_path, reacher_model, "--env", "cartpole-swingup", *small_eval_args(),
                             match="do not fit cartpole-swingup")
    assert "converted for reacher-easy" in err


def test_model_without_decoder_is_evaluated_in_latent_space(tmp_path, capsys, upstream_model):
    """No observation decoder: the observation-space metrics are null with the reason, the others are there."""
    report = tmp_path / "r.json"
    code, out, err = eval_cli(upstream_model, *small_eval_args("-o", report), capsys=capsys)
    assert code == 0, err
    doc = json.loads(report.read_text())
    assert doc["config"]["frame_skip"] == 2  # the converter's upstream default, honoured by the oracle
    assert doc["config"]["action_set"] == [[-1.0], [-0.5], [0.0], [0.5], [1.0]]  # the task's default set
    assert "default set" in doc["config"]["action_set_source"]
    (cell,) = doc["cells"]
    for key in ("m1_l2_onestep", "m2_l2_kstep", "m2_curve", "m3_action_agreement"):
        assert cell[key] is None and cell[f"{key}_ci"] is None, key
    assert cell["counts"]["m3_states_used"] is None
    assert set(cell["unavailable"]) == {"m1_l2_onestep", "m2_l2_kstep", "m2_curve", "m3_action_agreement"}
    assert "no observation decoder" in cell["unavailable"]["m1_l2_onestep"]
    assert cell["m1_latent_onestep"] > 0 and len(cell["m2_latent_curve"]) == K
    assert -1 <= cell["reward_rank_agreement"] <= 1 and 0 < cell["counts"]["reward_rank_states_used"] <= N
    assert "M1 one-step L2" not in out.splitlines()[2]  # no column nobody has ...
    assert "not available: M1 one-step L2, M2 k-step L2, M3 tau-b: no observation decoder" in out  # ... said so
    assert "latent 1-step L2" in out and "reward tau-b" in out


def test_metrics_option_computes_only_the_asked_spaces(tmp_path, capsys, cartpole_models):
    """`--metrics observation`: M1-M3 as in a full run, the latent ones null and said not requested."""
    report = tmp_path / "r.json"
    code, out, err = eval_cli(cartpole_models[0], "--metrics", "observation", *small_eval_args("-o", report),
                              capsys=capsys)
    assert code == 0, err
    doc = json.loads(report.read_text())
    assert doc["config"]["metric_spaces_requested"] == ["observation"]
    (cell,) = doc["cells"]
    full = run_eval(EvalOptions([cartpole_models[0]], n_states=N, k_steps=K, chunk_states=CHUNK))
    assert full["config"]["metric_spaces_requested"] == ["observation", "latent", "reward"]
    (full_cell,) = full["cells"]
    for key in ("m1_l2_onestep", "m2_l2_kstep", "m2_curve", "m3_action_agreement", "counts"):
        assert cell[key] == full_cell[key], key
        if key != "counts":
            assert cell[f"{key}_ci"] == full_cell[f"{key}_ci"], key  # the same resamples
    for key in ("m1_latent_onestep", "m2_latent_kstep", "m2_latent_curve"):
        assert cell[key] is None and full_cell[key] is not None, key
        assert cell["unavailable"][key] == "not requested (metric spaces asked for: observation)"
    assert cell["unavailable"]["reward_rank_agreement"] == "no reward head"  # what the model cannot have comes first
    assert "latent 1-step L2" not in out.splitlines()[2]
    assert "not available: latent 1-step L2, latent k-step L2: not requested" in out


def test_requested_spaces_parsing():
    assert evaluate.requested_spaces(None) == evaluate.SPACES == ("observation", "latent", "reward")
    assert evaluate.requested_spaces("all") == evaluate.requested_spaces("latent, all") == evaluate.SPACES
    assert evaluate.requested_spaces("reward,observation,reward") == ("observation", "reward")  # report order, once
    assert evaluate.requested_spaces(["latent"]) == ("latent",)
    with pytest.raises(WmelError, match="unknown metric space 'obs'"):
        evaluate.requested_spaces("obs")
    with pytest.raises(WmelError, match="no metric space asked for"):
        evaluate.requested_spaces(" , ")


@pytest.mark.parametrize("value,match", [("obs", "unknown metric space 'obs': choose from observation, latent, "
                                                 "reward, or all"),
                                          ("", "no metric space asked for")])
def test_bad_metrics_option(tmp_path, capsys, cartpole_models, value, match):
    assert_eval_user_error(capsys, tmp_path, cartpole_models[0], "--metrics", value,
                           *small_eval_args("-o", tmp_path / "r.json"), match=match)


def test_a_model_with_none_of_the_asked_metrics(tmp_path, capsys, cartpole_models, upstream_model):
    """Decoder-less and only observation-space metrics asked for: an error alone, skipped among others."""
    assert_eval_user_error(capsys, tmp_path, upstream_model, "--metrics", "observation",
                           *small_eval_args("-o", tmp_path / "r.json"),
                           match="has none of the metrics asked for (observation: no observation decoder")
    report = run_eval(EvalOptions([cartpole_models[0], cartpole_models[1], upstream_model], n_states=N, k_steps=K,
                                  chunk_states=CHUNK, metrics="reward"))
    (cell,) = report["cells"]
    assert cell["model"] == upstream_model and -1 <= cell["reward_rank_agreement"] <= 1
    assert cell["m1_latent_onestep"] is None and cell["m1_l2_onestep"] is None
    reasons = {s["model"]: s["reason"] for s in report["skipped"]}
    assert set(reasons) == set(cartpole_models)
    assert all("none of the metrics asked for (reward: no reward head)" in r for r in reasons.values())


def test_downstream_without_a_gap(tmp_path, capsys, cartpole_models):
    assert_eval_user_error(capsys, tmp_path, cartpole_models[0], "--downstream", _cpg(tmp_path / "d.json", None), *small_eval_args(),
                       match="no cpg.gap")


def test_downstream_count_must_match_the_models(tmp_path, capsys, cartpole_models):
    assert_eval_user_error(capsys, tmp_path, *cartpole_models, "--downstream", _cpg(tmp_path / "d.json", 0.1), *small_eval_args(),
                       match="one file per model")


def test_downstream_for_another_task(tmp_path, capsys, cartpole_models):
    assert_eval_user_error(capsys, tmp_path, cartpole_models[0],
                       "--downstream", _cpg(tmp_path / "d.json", 0.1, "dmc_reacher_easy"), *small_eval_args(),
                       match="is for environment")


@pytest.mark.parametrize("flag", ["-o", "--figure", "--save-states"])
def test_unwritable_output_path(tmp_path, capsys, cartpole_models, flag):
    assert_eval_user_error(capsys, tmp_path, cartpole_models[0], flag, tmp_path / "no" / "such" / "dir" / "x.png", *small_eval_args(),
                       match="does not exist")


def test_unknown_task(tmp_path, capsys, cartpole_models):
    err = assert_eval_user_error(capsys, tmp_path, cartpole_models[0], "--env", "cheetah-run", *small_eval_args(), match="unknown task")
    assert "cartpole-swingup" in err


def test_all_models_bad_is_an_error(tmp_path, capsys, reacher_model):
    assert_eval_user_error(capsys, tmp_path, reacher_model, tmp_path / "missing.safetensors", "--env", "cartpole-swingup",
                       "-o", tmp_path / "r.json", *small_eval_args(), match="no model could be evaluated")


def test_non_positive_sizes_are_errors():
    with pytest.raises(WmelError, match="n_states"):
        evaluate.make_problem("cartpole-swingup", n_states=0)
    with pytest.raises(WmelError, match="k_steps"):
        evaluate.make_problem("cartpole-swingup", n_states=3, k_steps=0)


# --------------------------------------------------------------------------- #
# Exit status, progress, episode ids, figure formats, several tasks in one run
# --------------------------------------------------------------------------- #


def test_a_skipped_model_gives_exit_status_1_unless_allowed(tmp_path, capsys, cartpole_models):
    report = tmp_path / "r.json"
    missing = tmp_path / "missing.safetensors"
    code, out, err = eval_cli(cartpole_models[0], missing, *small_eval_args("-o", report), capsys=capsys)
    assert code == 1 and "1 model(s) skipped" in err
    doc = json.loads(report.read_text())  # written all the same
    assert [s["model"] for s in doc["skipped"]] == [str(missing)] and len(doc["cells"]) == 1
    assert f"{missing}: model file" in out  # the table lists it
    code, _, err = eval_cli(cartpole_models[0], missing, "--allow-skips", *small_eval_args(), capsys=capsys)
    assert code == 0 and "skipped" not in without_progress(err)


def test_progress_is_one_line_per_phase_when_stderr_is_not_a_terminal(capsys, cartpole_models):
    from wmel_jax.evaluate import DEFAULT_N_STATES

    assert N == DEFAULT_N_STATES  # --n-states left out: the sampling phase names the default it resolves to
    code, out, err = eval_cli(*cartpole_models, "--k-steps", K, "--chunk-states", CHUNK, capsys=capsys)
    assert code == 0
    lines = [line for line in err.splitlines() if line.startswith(PROGRESS_PREFIX)]
    text = "\n".join(lines)
    for phase in ("loading 2 model file(s)", f"cartpole-swingup: sampling {N} states (seeded rollouts)",
                  "cartpole-swingup: the oracle's answers (150 states x 5 actions", "model 1/2: ", "model 2/2: "):
        assert phase in text, (phase, text)
    assert all(line[len(PROGRESS_PREFIX):].split("]")[0].strip().endswith("s") for line in lines)  # time-stamped
    assert "timings:" not in out  # only with --timings
    code, out, err = eval_cli(*cartpole_models, "-q", "--timings", *small_eval_args(), capsys=capsys)
    assert code == 0 and err == "" and "timings: load_s" in out


def test_episode_ids_rerun_given_states_with_the_sampled_intervals(tmp_path, capsys, cartpole_models):
    saved, ids = tmp_path / "states.npy", tmp_path / "ids.npy"
    runs = {}
    for name, extra in (("sampled", ["--save-states", saved]), ("ids", ["--states", saved, "--episode-ids", ids]),
                        ("states", ["--states", saved])):
        if name == "ids":
            np.save(ids, np.arange(N) // 25)
        report = tmp_path / f"{name}.json"
        code, out, err = eval_cli(cartpole_models[0], *small_eval_args("-o", report, *extra), capsys=capsys)
        assert code == 0, err
        runs[name] = (json.loads(report.read_text()), out)
    (sampled, _), (with_ids, _), (alone, table) = runs["sampled"], runs["ids"], runs["states"]
    # The same states in the same episodes: the same intervals, to the bit.
    for key in ("m1_l2_onestep_ci", "m2_curve_ci", "m3_action_agreement_ci", "m1_latent_onestep_ci"):
        assert with_ids["cells"][0][key] == sampled["cells"][0][key], key
    assert with_ids["config"]["n_episodes"] == 6 and with_ids["config"]["episodes"] == f"file: {ids}"
    # Each state on its own: as many units as states, narrower intervals, and the table says what that means.
    assert alone["config"]["n_episodes"] == N and alone["config"]["interval"]["unit"] == "state"
    low, high = alone["cells"][0]["m1_l2_onestep_ci"]
    s_low, s_high = sampled["cells"][0]["m1_l2_onestep_ci"]
    assert high - low < s_high - s_low
    assert "--episode-ids" in table


@pytest.mark.parametrize("ids, extra, match", [
    (np.zeros(N - 1, int), True, f"{N - 1} episode ids for {N} states"),
    (np.full(N, 0.5), True, "not an integer"),
    (np.zeros(N, int), False, "--episode-ids labels the rows of --states"),
], ids=["short", "fractional", "without-states"])
def test_bad_episode_ids(tmp_path, capsys, cartpole_models, ids, extra, match):
    states = tmp_path / "s.npy"
    np.save(states, evaluate.make_problem("cartpole-swingup", n_states=N, k_steps=K).states)
    np.save(tmp_path / "ids.npy", ids)
    given = ["--states", states] if extra else []
    assert_eval_user_error(capsys, tmp_path, cartpole_models[0], *given, "--episode-ids", tmp_path / "ids.npy",
                           *small_eval_args(), match=match)


def test_figure_extension_is_checked_before_anything_runs(tmp_path, capsys, cartpole_models):
    assert_eval_user_error(capsys, tmp_path, cartpole_models[0], "--figure", tmp_path / "f.jpg",
                           "-o", tmp_path / "r.json", *small_eval_args(), match="give a .png, .pdf or .svg")
    code, _, err = eval_cli(cartpole_models[0], "--figure", tmp_path / "f.pdf", *small_eval_args(), capsys=capsys)
    assert code == 0, err
    assert (tmp_path / "f.pdf").read_bytes()[:4] == b"%PDF"


def test_several_tasks_refuse_inputs_that_belong_to_one(tmp_path, capsys, cartpole_models, reacher_model):
    assert_eval_user_error(capsys, tmp_path, cartpole_models[0], reacher_model, "--save-states", tmp_path / "s.npy",
                           *small_eval_args(), match="--save-states belong to one problem")
