"""The report JSON, the stdout table, the PNG figure, and reading downstream CPG JSONs."""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path

import numpy as np
import pytest

import wmel_jax
from wmel_jax import downstream as ds
from wmel_jax import report as rp
from wmel_jax.errors import WmelError
from wmel_jax.figure import plot_report, plot_reports

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REAL_CARTPOLE_CPG = Path("/work/shared/reference-data/results/dmc_cartpole/tdmpc2_cpg_seed1.json")


def _cpg_json(path: Path, gap=0.3, environment="dmc_cartpole_swingup", seed=0, size=1, **cpg_extra) -> Path:
    """A small CPG JSON with the reference's structure (the real ones also carry full episode logs)."""
    data = {
        "schema_version": "1.0",
        "environment": environment,
        "metric": "counterfactual_planning_gap",
        "cpg": {"oracle_success_rate": 1.0, "learned_success_rate": 1.0 - gap, "gap": gap,
                "n_episodes_oracle": 10, "n_episodes_learned": 10, "verdict": "INCONCLUSIVE", **cpg_extra},
        "config": {"training_steps": 1000000},
        "training": {"training_steps": 1000000, "tdmpc2_model_size": size, "frame_skip": 1},
        "seed": seed,
    }
    path.write_text(json.dumps(data))
    return path


CONFIG = {
    "env": "cartpole-swingup",
    "n_states": 150,
    "k_steps": 3,
    "seed": 0,
    "frame_skip": 1,
    "precision": "float64",
    "action_set": np.array([[-1.0], [-0.5], [0.0], [0.5], [1.0]]),
    "action_sequence": np.array([[1.0], [0.0], [-1.0]]),
}


def _metrics(m1, m3, used=150, **extra):
    curve = np.array([m1, 2 * m1, 4 * m1], dtype=np.float32)
    return {"m1_l2_onestep": np.float32(m1), "m2_l2_kstep": curve[-1], "m2_curve": curve,
            "m3_action_agreement": m3, "m3_states_used": used, **extra}


@pytest.fixture
def paired_report(tmp_path):
    gaps = [0.1, 0.3, 0.5, 0.8]
    cells = []
    for i, gap in enumerate(gaps):
        d = ds.read_downstream(_cpg_json(tmp_path / f"cpg{i}.json", gap=gap, seed=i))
        m3 = None if i == 2 else 0.9 - 0.2 * i
        cells.append(rp.make_cell(f"models/cartpole_{i}.safetensors",
                                  _metrics(0.01 * (i + 1), m3, used=0 if m3 is None else 140,
                                           m1_latent_onestep=0.1 * (4 - i)), d))
    return rp.build_report(
        CONFIG, cells, skipped=[{"model": "models/broken.pt", "reason": "obs width 4 does not fit (5)"}],
        timings={"compile_s": 1.23456789, "run_s": 0.5},
        generated_at=dt.datetime(2026, 6, 2, 6, 41, 24, tzinfo=dt.timezone.utc),
    )


# ------------------------------------------------------------------ report


def test_report_fields_and_json_round_trip(paired_report, tmp_path):
    r = paired_report
    assert list(r) == ["schema_version", "wmel_jax_version", "generated_at", "config", "cells",
                       "precision_warnings", "within_env_correlation", "pooled_m3_correlation",
                       "pairing_warnings", "skipped", "timings"]
    assert r["wmel_jax_version"] == wmel_jax.__version__
    assert r["generated_at"] == "2026-06-02T06:41:24+00:00"
    assert list(r["config"]) == list(rp.CONFIG_KEYS)
    assert r["config"]["action_set"] == [[-1.0], [-0.5], [0.0], [0.5], [1.0]]
    cell = r["cells"][0]
    assert list(cell)[:6] == ["model", "env", "m1_l2_onestep", "m2_l2_kstep", "m2_curve",
                              "m3_action_agreement"]
    assert cell["counts"] == {"m3_states_used": 140}  # counts nested, not beside the metrics
    assert cell["env"] == "cartpole-swingup"
    assert cell["m1_latent_onestep"] == 0.4  # extra metric fields pass through
    # Pairing, in the reference bundle's layout.
    assert (cell["gap"], cell["verdict"], cell["model_size"], cell["seed"]) == (0.1, "INCONCLUSIVE", 1, 0)
    assert cell["context"]["downstream_json"].endswith("cpg0.json")
    assert cell["context"]["learned_success_rate"] == 0.9
    assert r["skipped"] == [{"model": "models/broken.pt", "reason": "obs width 4 does not fit (5)"}]
    assert r["pooled_m3_correlation"] is None  # one task
    within = r["within_env_correlation"]["cartpole-swingup"]
    assert within["n_cells"] == 4
    assert set(within["metrics"]) == {"m1_l2_onestep", "m2_l2_kstep", "m3_action_agreement", "m1_latent_onestep"}
    assert within["metrics"]["m1_l2_onestep"]["rho"] == 1.0
    assert within["metrics"]["m3_action_agreement"]["n_cells"] == 3
    assert within["metrics"]["m1_l2_onestep"]["bootstrap_seed"] == 0

    path = rp.write_report(r, tmp_path / "report.json")
    assert json.loads(path.read_text()) == r


def test_values_rounded_to_6_decimals_only_in_the_report():
    cells = [rp.make_cell("m", _metrics(0.1, 0.123456789, used=7))]
    cells[0]["m1_l2_onestep"] = 0.1234567891
    r = rp.build_report(CONFIG, cells, timings={"run_s": 1.0000004})
    assert r["cells"][0]["m1_l2_onestep"] == 0.123457
    assert r["cells"][0]["m3_action_agreement"] == 0.123457
    used = r["cells"][0]["counts"]["m3_states_used"]
    assert used == 7 and isinstance(used, int)
    assert r["timings"]["run_s"] == 1.0


def test_undefined_values_are_null_never_nan(tmp_path):
    metrics = _metrics(0.1, None, used=0)
    metrics["m2_curve"] = np.array([0.1, np.inf, np.nan])  # a diverged rollout
    metrics["m2_l2_kstep"] = np.float32("nan")
    r = rp.build_report(CONFIG, [rp.make_cell("m", metrics)])
    cell = r["cells"][0]
    assert cell["m3_action_agreement"] is None
    assert cell["m2_l2_kstep"] is None
    assert cell["m2_curve"] == [0.1, None, None]
    assert r["within_env_correlation"] == {}  # nothing paired
    text = rp.write_report(r, tmp_path / "r.json").read_text()
    assert "NaN" not in text and "Infinity" not in text and "null" in text


def test_nan_is_refused_and_no_file_is_left(tmp_path):
    out = tmp_path / "report.json"
    out.write_text("previous\n")
    with pytest.raises(ValueError):
        rp.write_report({"m1_l2_onestep": math.nan}, out)
    assert out.read_text() == "previous\n"  # untouched
    assert list(tmp_path.iterdir()) == [out]  # no temporary file left


def test_an_exception_mid_write_leaves_no_file(tmp_path, monkeypatch):
    import wmel_jax.fileio as fileio

    real_dumps = json.dumps
    target = tmp_path / "report.json"

    def exploding_write(path, obj):  # writes half the text, then fails
        with fileio.atomic_output(path, "w") as f:
            f.write(real_dumps(obj)[:10])
            raise OSError("disk full")

    monkeypatch.setattr(rp, "write_json", exploding_write)
    with pytest.raises(OSError):
        rp.write_report({"a": 1}, target)
    assert list(tmp_path.iterdir()) == []


def test_build_report_checks_its_inputs():
    with pytest.raises(ValueError, match="config lacks"):
        rp.build_report({"env": "cartpole-swingup"}, [])
    with pytest.raises(ValueError, match="lacks metric fields"):
        rp.make_cell("m", {"m1_l2_onestep": 0.1})


def test_table_lists_each_model_skipped_and_correlations(paired_report):
    table = rp.format_table(paired_report)
    for i in range(4):
        assert f"models/cartpole_{i}.safetensors" in table
    assert "models/broken.pt: obs width 4 does not fit (5)" in table
    assert "Spearman(metric, gap) within cartpole-swingup, 4 paired cells" in table
    for key in ("m1_l2_onestep", "m2_l2_kstep", "m3_action_agreement", "m1_latent_onestep"):
        assert key in table
    assert "n/a (0/150)" in table  # the undefined M3
    assert " 0.01 " in table  # M1 of the first cell (no interval: four significant digits)
    assert "compile_s" not in table  # timings only when asked
    assert "compile_s 1.235" in rp.format_table(paired_report, timings=True)


def _decoderless(m_latent, rank, used):
    """A cell of a model without a decoder: null observation-space metrics, the reasons, latent ones."""
    why = "no observation decoder"
    return {"m1_l2_onestep": None, "m2_l2_kstep": None, "m2_curve": None, "m3_action_agreement": None,
            "m3_states_used": None, "m1_latent_onestep": m_latent, "m2_latent_kstep": 2 * m_latent,
            "m2_latent_curve": [m_latent, 2 * m_latent], "reward_rank_agreement": rank,
            "reward_rank_states_used": used,
            "unavailable": {k: why for k in ("m1_l2_onestep", "m2_l2_kstep", "m2_curve", "m3_action_agreement")}}


def test_table_and_report_for_models_without_a_decoder():
    spaces = {"m1_l2_onestep": "observation", "m1_latent_onestep": "latent", "reward_rank_agreement": "reward"}
    up = rp.make_cell("upstream.safetensors", _decoderless(0.25, 0.4, 140))
    r = rp.build_report(CONFIG, [up], metric_spaces=spaces)
    assert list(r)[3:5] == ["config", "metric_spaces"] and r["metric_spaces"] == spaces
    assert r["cells"][0]["unavailable"]["m1_l2_onestep"] == "no observation decoder"
    table = rp.format_table(r)
    header = table.splitlines()[2]
    # Nobody has the observation-space metrics: their columns are dropped, and the table says why.
    assert "M1 one-step L2" not in header and "latent 1-step L2" in header and "reward tau-b" in header
    assert "not available: M1 one-step L2, M2 k-step L2, M3 tau-b: no observation decoder" in table
    assert "+0.4 (140/150)" in table and "0.25" in table
    assert "spaces: latent: latent 1-step L2; reward: reward tau-b" in table  # of the columns shown
    # Beside a model that has them: a "-" in its row instead.
    adapter = rp.make_cell("adapter.safetensors", _metrics(0.01, 0.5, m1_latent_onestep=0.3,
                                                           unavailable={"reward_rank_agreement": "no reward head"}))
    table = rp.format_table(rp.build_report(CONFIG, [adapter, up], metric_spaces=spaces))
    header, adapter_row, up_row = table.splitlines()[2:5]
    assert "M1 one-step L2" in header and "reward tau-b" in header
    assert up_row.split()[1:4] == ["-", "-", "-"] and adapter_row.split()[-1] == "-"
    assert "not available: reward tau-b: no reward head" in table


def test_table_without_cells():
    table = rp.format_table(rp.build_report(CONFIG, [], skipped=[{"model": "x.pt", "reason": "no decoder"}]))
    assert "no cells evaluated" in table and "x.pt: no decoder" in table


def test_pooled_m3_section_when_cells_span_tasks(tmp_path):
    cells = []
    for i in range(3):
        for env in ("cartpole-swingup", "reacher-easy"):
            d = ds.read_downstream(_cpg_json(tmp_path / f"{env}{i}.json", gap=0.1 * i + (env < "d") * 0.05,
                                             environment="dmc_" + env.replace("-", "_")))
            cells.append(rp.make_cell(f"{env}{i}", _metrics(0.1 * i + 0.01, 0.5 - 0.1 * i), d, env=env))
    r = rp.build_report(CONFIG, cells, n_resamples=300)
    assert set(r["within_env_correlation"]) == {"cartpole-swingup", "reacher-easy"}
    assert r["pooled_m3_correlation"]["tasks"] == ["cartpole-swingup", "reacher-easy"]
    assert "Pooled across cartpole-swingup, reacher-easy" in rp.format_table(r)


# ------------------------------------------------------------------ figure


def test_figure_is_a_png(paired_report, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    path = plot_report(paired_report, out / "report.png")
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 10_000
    assert list(out.iterdir()) == [path]


def test_figure_not_written_when_plotting_fails(paired_report, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    def failing_savefig(self, f, **kwargs):
        f.write(PNG_SIGNATURE)  # a partial file...
        raise RuntimeError("renderer failed")  # ...then the failure

    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr(Figure, "savefig", failing_savefig)
    with pytest.raises(RuntimeError):
        plot_report(paired_report, out / "report.png")
    assert list(out.iterdir()) == []


def test_figure_with_undefined_values(tmp_path):
    metrics = _metrics(0.1, None, used=0)
    metrics["m2_curve"] = np.array([0.1, np.nan, np.nan])
    r = rp.build_report(CONFIG, [rp.make_cell("m", metrics)])
    assert plot_report(r, tmp_path / "f.png").read_bytes()[:8] == PNG_SIGNATURE


def test_several_reports_in_one_figure_is_taller(paired_report, tmp_path):
    one = plot_report(paired_report, tmp_path / "one.png").read_bytes()
    two = plot_reports([paired_report, paired_report], tmp_path / "two.png").read_bytes()
    assert two[:8] == PNG_SIGNATURE
    height = lambda png: int.from_bytes(png[20:24], "big")  # the IHDR chunk's height field
    assert height(two) > 1.8 * height(one)


# -------------------------------------------------------------- downstream


def test_read_downstream_fields(tmp_path):
    d = ds.read_downstream(_cpg_json(tmp_path / "c.json", gap=0.5, seed=2, size=5))
    assert (d.gap, d.verdict, d.model_size, d.seed, d.training_steps) == (0.5, "INCONCLUSIVE", 5, 2, 1000000)
    assert (d.oracle_success_rate, d.learned_success_rate) == (1.0, 0.5)
    assert (d.environment, d.task) == ("dmc_cartpole_swingup", "cartpole-swingup")


@pytest.mark.skipif(not REAL_CARTPOLE_CPG.exists(), reason="reference data not present on this machine")
def test_read_a_real_reference_cpg_json():
    d = ds.read_downstream(REAL_CARTPOLE_CPG)
    assert d.task == "cartpole-swingup"
    assert d.gap == pytest.approx(0.8)
    assert (d.verdict, d.model_size, d.seed, d.training_steps) == ("MODEL BOTTLENECK", 1, 1, 1000000)


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "is not JSON"),
        (b"\xff\xfe\x00", "is not JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"environment": "dmc_cartpole_swingup"}', "has no cpg.gap"),
        ('{"environment": "dmc_cartpole_swingup", "cpg": {"verdict": "X"}}', "has no cpg.gap"),
        ('{"environment": "dmc_cartpole_swingup", "cpg": {"gap": "0.3"}}', "not a finite number"),
        ('{"environment": "dmc_cartpole_swingup", "cpg": {"gap": NaN}}', "not a finite number"),
        ('{"environment": "dmc_cartpole_swingup", "cpg": {"gap": true}}', "not a finite number"),
        ('{"environment": "dmc_cartpole_swingup", "cpg": {"gap": null}}', "not a finite number"),
        ('{"cpg": {"gap": 0.2}}', "has no environment"),
    ],
)
def test_bad_downstream_is_a_one_line_user_error(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(WmelError, match=message) as exc:
        ds.read_downstream(path)
    assert "\n" not in str(exc.value) and "bad.json" in str(exc.value)


def test_missing_downstream_file(tmp_path):
    with pytest.raises(WmelError, match="does not exist"):
        ds.read_downstream(tmp_path / "nope.json")
    with pytest.raises(WmelError, match="is a directory, not a regular file"):
        ds.read_downstream(tmp_path)


def test_pairing_rule(tmp_path):
    a = _cpg_json(tmp_path / "a.json", gap=0.1)
    b = _cpg_json(tmp_path / "b.json", gap=0.2)
    models = ["m1.safetensors", "m2.safetensors"]
    assert ds.pair_downstream(models, None, "cartpole-swingup") == [None, None]
    assert ds.pair_downstream(models, [], "cartpole-swingup") == [None, None]
    paired = ds.pair_downstream(models, [a, b], "cartpole-swingup")
    assert [d.gap for d in paired] == [0.1, 0.2]  # same order as the models
    with pytest.raises(WmelError, match="one file per model.*got 1 file.*for 2 model"):
        ds.pair_downstream(models, [a], "cartpole-swingup")
    reacher = _cpg_json(tmp_path / "r.json", environment="dmc_reacher_easy")
    with pytest.raises(WmelError, match="'dmc_reacher_easy'.*task evaluated is 'cartpole-swingup'"):
        ds.pair_downstream(models, [a, reacher], "cartpole-swingup")


@pytest.mark.parametrize(
    "name, task",
    [("dmc_cartpole_swingup", "cartpole-swingup"), ("dmc_reacher_easy", "reacher-easy"),
     ("acrobot-swingup", "acrobot-swingup"), ("DMC_Acrobot_Swingup", "acrobot-swingup")],
)
def test_normalize_task(name, task):
    assert ds.normalize_task(name) == task


# ------------------------------------------------------------ intervals, warnings, groups


def _with_intervals(m1, m3, *, sd=0.01, n_episodes=6, **extra):
    """What model_metrics returns: values, intervals, counts, per-episode sds."""
    curve = [m1, 2 * m1, 4 * m1]
    half = 1.96 * sd / math.sqrt(n_episodes)
    return {
        "m1_l2_onestep": m1, "m1_l2_onestep_ci": [m1 - half, m1 + half],
        "m2_l2_kstep": curve[-1], "m2_l2_kstep_ci": [curve[-1] - 2 * half, curve[-1] + 2 * half],
        "m2_curve": curve, "m2_curve_ci": [[v - half, v + half] for v in curve],
        "m3_action_agreement": m3, "m3_action_agreement_ci": None if m3 is None else [m3 - 0.3, min(1.0, m3 + 0.3)],
        "m3_states_used": 150, "n_states": 150, "n_episodes": n_episodes,
        "episode_sd": {"m1_l2_onestep": sd, "m2_l2_kstep": 2 * sd, "m3_action_agreement": 0.7},
        **extra,
    }


def test_a_cell_holds_only_metrics_for_the_reference_correlate(tmp_path):
    from conftest import correlate_metric_keys

    cells = [rp.make_cell(f"m{i}", _with_intervals(0.01 * (i + 1), 0.5), ds.read_downstream(
        _cpg_json(tmp_path / f"c{i}.json", gap=0.1 * i, seed=i))) for i in range(3)]
    r = rp.build_report(CONFIG, cells)
    cell = r["cells"][0]
    assert cell["counts"] == {"n_states": 150, "n_episodes": 6, "m3_states_used": 150}
    assert list(cell)[2:4] == ["m1_l2_onestep", "m1_l2_onestep_ci"]  # each interval beside its value
    # correlate.py's rule finds the metrics and nothing else: no counts, no interval, no seed.
    assert correlate_metric_keys(r["cells"]) == {"m1_l2_onestep", "m2_l2_kstep", "m3_action_agreement"}
    assert set(r["within_env_correlation"]["cartpole-swingup"]["metrics"]) == {
        "m1_l2_onestep", "m2_l2_kstep", "m3_action_agreement"}


@pytest.mark.parametrize("value, ci, signed, text", [
    (0.137262, [0.10529, 0.16932], False, "0.137 [0.105, 0.169]"),  # half-width 0.032: 3 decimals
    (-0.538, [-0.968, 0.4226], True, "-0.54 [-0.97, +0.42]"),  # 0.70: 2 decimals
    (0.015, [0.0080, 0.0200], False, "0.0150 [0.0080, 0.0200]"),  # 0.006: 4 decimals
    (12.3456, [8.1, 16.9], False, "12.3 [8.1, 16.9]"),  # 4.4: 1 decimal
    (0.0123456, None, False, "0.01235"),  # no interval: 4 significant digits
    (None, None, False, "n/a"),
])
def test_values_are_printed_to_the_precision_their_interval_supports(value, ci, signed, text):
    assert rp.format_value(value, ci, signed=signed) == text


def test_table_shows_intervals_and_warns_about_imprecise_ones():
    cfg = {**CONFIG, "n_episodes": 6,
           "interval": {"method": "expanded percentile", "unit": "episode", "n_units": 6, "n_resamples": 10_000,
                        "confidence": 0.95, "seed": 0}}
    precise = rp.make_cell("precise", _with_intervals(0.01, 0.9, sd=0.001))
    vague = rp.make_cell("vague", _with_intervals(0.05, 0.2, sd=0.2))
    r = rp.build_report(cfg, [precise, vague])
    table = rp.format_table(r)
    assert "N=150 states in 6 episodes" in table.splitlines()[0]
    assert "95% intervals, a bootstrap over 6 episodes (10,000 resamples, expanded percentile)" in table
    assert "+0.90 [+0.60, +1.00]" in table  # M3 with its interval, signed
    warned = {(w["model"], w["metric"]) for w in r["precision_warnings"]}
    assert ("vague", "m1_l2_onestep") in warned and ("precise", "m1_l2_onestep") not in warned
    assert ("precise", "m3_action_agreement") in warned  # half-width 0.3 > 0.1, whatever the spread
    assert "precision: " in table and "about N = " in table and "would bring it under" in table


def test_states_without_episodes_are_called_what_they_are():
    cfg = {**CONFIG, "n_episodes": 150,
           "interval": {"method": "expanded percentile", "unit": "state", "n_units": 150, "n_resamples": 10_000,
                        "confidence": 0.95, "seed": 0}}
    table = rp.format_table(rp.build_report(cfg, [rp.make_cell("m", _with_intervals(0.01, 0.5))]))
    assert "a bootstrap over 150 states" in table and "--episode-ids" in table


def test_checkpoint_meta_that_contradicts_its_cpg_file_is_named(tmp_path):
    d = ds.read_downstream(_cpg_json(tmp_path / "c.json", gap=0.3, seed=2, size=5))
    agreeing = rp.make_cell("ok", _metrics(0.01, 0.5), d, model_meta={"training_steps": 1000000, "seed": 2,
                                                                       "tdmpc2_model_size": 5})
    assert "meta_mismatch" not in agreeing["context"]
    partial = rp.make_cell("partial", _metrics(0.01, 0.5), d, model_meta={"frame_skip": 1})  # says nothing
    assert "meta_mismatch" not in partial["context"]
    wrong = rp.make_cell("wrong", _metrics(0.01, 0.5), d, model_meta={"training_steps": 200, "seed": 2,
                                                                     "tdmpc2_model_size": 1})
    r = rp.build_report(CONFIG, [agreeing, partial, wrong])
    (w,) = r["pairing_warnings"]
    assert w["model"] == "wrong" and set(w["fields"]) == {"training_steps", "tdmpc2_model_size"}
    assert w["fields"]["training_steps"] == {"checkpoint": 200, "downstream": 1000000}
    table = rp.format_table(r)
    assert "training_steps 200 (checkpoint) vs 1000000 (downstream)" in table and "c.json" in table


def test_correlation_block_in_the_table_warns_and_gives_the_p_value(paired_report):
    table = rp.format_table(paired_report)
    assert "warning: only 4 paired cells" in table
    assert "p=" in table and "exact permutation" in table and "interval not meaningful" in table


def test_a_report_of_several_groups_prints_a_block_per_group(tmp_path):
    reacher = {**CONFIG, "env": "reacher-easy", "action_set": np.zeros((9, 2)), "action_sequence": np.zeros((3, 2))}
    groups = [(CONFIG, [rp.make_cell("c0", _with_intervals(0.01, 0.9)), rp.make_cell("c1", _with_intervals(0.02, 0.5))]),
              (reacher, [rp.make_cell("r0", _with_intervals(0.3, 0.7))])]
    r = rp.build_group_report(groups, skipped=[{"model": "x", "reason": "missing"}])
    assert "config" not in r and [g["config"]["env"] for g in r["groups"]] == ["cartpole-swingup", "reacher-easy"]
    assert [g["cells"] for g in r["groups"]] == [[0, 1], [2]]
    assert [c["env"] for c in r["cells"]] == ["cartpole-swingup", "cartpole-swingup", "reacher-easy"]
    assert {w["group"] for w in r["precision_warnings"]} <= {0, 1}
    table = rp.format_table(r)
    assert table.count("cartpole-swingup: N=150") == 1 and table.count("reacher-easy: N=150") == 1
    assert table.index("c1") < table.index("reacher-easy: N=150") < table.index("r0") < table.index("skipped")
    # One group: build_report's report exactly.
    one = rp.build_group_report(groups[:1], generated_at=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))
    assert one == rp.build_report(*groups[0], generated_at=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))
    path = plot_report(r, tmp_path / "groups.png")  # a row of panels per group
    assert path.read_bytes()[:8] == PNG_SIGNATURE


@pytest.mark.parametrize("suffix, signature", [("png", PNG_SIGNATURE), ("pdf", b"%PDF"), ("svg", b"<?xml")])
def test_figure_format_follows_the_extension(paired_report, tmp_path, suffix, signature):
    assert plot_report(paired_report, tmp_path / f"f.{suffix.upper()}").read_bytes()[: len(signature)] == signature


@pytest.mark.parametrize("name", ["f.jpg", "f", "f.png.txt"])
def test_figure_with_an_unknown_extension_is_refused(paired_report, tmp_path, name):
    from wmel_jax.figure import figure_format

    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(WmelError, match="give a .png, .pdf or .svg file"):
        figure_format(out / name)
    with pytest.raises(WmelError):
        plot_report(paired_report, out / name)
    assert list(out.iterdir()) == []


def test_figure_draws_latent_reward_and_gap_panels_when_present(tmp_path):
    from wmel_jax import figure

    cells = []
    for i in range(5):
        d = ds.read_downstream(_cpg_json(tmp_path / f"c{i}.json", gap=0.1 * i))
        cells.append(rp.make_cell(f"m{i}", _with_intervals(0.01 * (i + 1), 0.9 - 0.1 * i, m1_latent_onestep=0.1 * i,
                                                         m1_latent_onestep_ci=[0.1 * i - 0.01, 0.1 * i + 0.01],
                                                         reward_rank_agreement=0.5), d))
    r = rp.build_report(CONFIG, cells, n_resamples=300)
    rows = figure._rows_of(r)
    assert [p[0] for p in rows[0]] == ["m2_curve", "m1_l2_onestep", "m3_action_agreement"]
    assert [p[0] for p in rows[1]] == ["m1_latent_onestep", "reward_rank_agreement"]
    gap_panels = [p for row in rows[2:] for p in row]
    assert {p[2] for p in gap_panels} == set(r["within_env_correlation"]["cartpole-swingup"]["metrics"])
    assert plot_report(r, tmp_path / "all.svg").read_bytes()[:5] == b"<?xml"
