"""``eval`` over 4 CPU devices equals the one-device run (``XLA_FLAGS`` set in a subprocess, before JAX starts).

The subprocess (``tests/distributed_devices_check.py``) samples, computes the
oracle's answers and a shipped model's metrics on N = 150 states (not a
multiple of 4: padded and masked) on one device and on four, and runs the
pipeline both ways; this test holds the differences to the tolerances of
:mod:`wmel_jax.distributed`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from wmel_jax.distributed import SHARDED_RTOL

#: Metrics from device chunks of different sizes (the same --chunk-states on 4
#: devices): XLA's float32 matmuls round differently per batch size (up to
#: 8e-8 in a prediction), as between chunk sizes on one device
#: (tests/test_eval.py, CHUNK_RTOL). One-step metrics take one such rounding:
CHUNK_RTOL = 1e-6
#: k-step metrics feed each prediction back k times (k = 10 here), so the
#: rounding compounds with the model's own sensitivity: measured for M2 5.7e-7
#: with the shipped reacher model, 4.3e-6 with the cartpole one (the latent
#: rollouts, SimNorm-bounded: 5e-8 and 7e-8).
KSTEP_CHUNK_RTOL = 1e-4
KSTEP_METRICS = ("m2_l2_kstep", "m2_curve", "m2_latent_kstep", "m2_latent_curve")
CHECK = Path(__file__).with_name("distributed_devices_check.py")


def shared_cache(tmp_path_factory) -> Path:
    """A cache folder for the session's distributed tests (the same shapes: traced once, for both modules)."""
    return tmp_path_factory.getbasetemp() / "distributed-cache"


@pytest.fixture(scope="module")
def four_devices(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("devices") / "summary.json"
    env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"),
               WMEL_JAX_CACHE_DIR=str(shared_cache(tmp_path_factory)))
    proc = subprocess.run([sys.executable, str(CHECK), str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


def test_the_run_saw_four_devices_and_recorded_them(four_devices):
    assert four_devices["devices"] == 4
    rt = four_devices["runtime"]
    assert rt["1"]["devices"] == 1 and rt["4"]["devices"] == 4 and rt["4"]["devices_per_process"] == 4
    assert rt["4"]["processes"] == 1 and rt["4"]["platform"] == "cpu"


def test_sampled_states_and_oracle_answers_match(four_devices):
    assert four_devices["states"]["rel"] <= SHARDED_RTOL, four_devices["states"]
    for name, d in four_devices["targets"].items():
        assert d["rel"] <= SHARDED_RTOL, (name, four_devices["targets"])


def test_model_metrics_on_the_same_inputs_are_bit_for_bit(four_devices):
    """The model kernel per device is the one-device chunk program: same rows in, same sums out."""
    same = four_devices["same_inputs"]
    assert same.pop("states_used_equal")
    assert all(v == 0.0 for v in same.values()), same


def test_metrics_of_the_same_device_chunk_match(four_devices):
    same = four_devices["same_device_chunk"]
    assert same.pop("states_used_equal")
    assert all(v <= SHARDED_RTOL for v in same.values()), same


def test_metrics_of_the_same_chunk_flag_match_to_float32_rounding(four_devices):
    same = four_devices["same_chunk_flag"]
    assert same.pop("states_used_equal")
    for name, v in same.items():
        assert v <= (KSTEP_CHUNK_RTOL if name in KSTEP_METRICS else CHUNK_RTOL), (name, same)


def test_the_reports_are_equal(four_devices):
    assert four_devices["report_equal"]
