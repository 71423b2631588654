"""Benchmark: converting a size-48 checkpoint, and loading a converted size-5 model.

Targets (issue 2): converting a 48M upstream TD-MPC2 checkpoint takes < 30 s;
loading a converted 5M model takes < 1 s in a fresh process with no torch
imported. Measured here:

(a) ``convert()`` of a size-48 upstream checkpoint, in process (torch already
    imported), median of ``--repeats`` runs; plus the whole
    ``python -m wmel_jax convert`` command in a fresh process (imports included).
(b) In fresh processes with torch blocked: ``import wmel_jax.model`` (jax/flax
    import), ``wmel_jax.load`` itself (read + validate + put on device, blocked
    until ready), and the first (compile) and second ``encode`` calls; medians.

Writes ``benchmarks/results/convert_load.json``. Run from the repository root::

    python -m wmel_jax.benchmarks.convert_load [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"

_LOAD_SCRIPT = r"""
import importlib.abc, json, sys, time

class BlockTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this benchmark")

sys.meta_path.insert(0, BlockTorch())
t0 = time.perf_counter()
import jax, numpy as np
import wmel_jax.model
t1 = time.perf_counter()
model = wmel_jax.load(sys.argv[1])
jax.block_until_ready(model.params)
t2 = time.perf_counter()
obs = np.zeros((256, model.arch.obs_dim), np.float32)
model.encode(obs).block_until_ready()
t3 = time.perf_counter()
model.encode(obs).block_until_ready()
t4 = time.perf_counter()
assert "torch" not in sys.modules
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "first_encode_s": t3 - t2,
                  "second_encode_s": t4 - t3}))
"""


def _median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def bench_convert(tmp: Path, repeats: int) -> dict:
    from wmel_jax.converters import tdmpc2_torch as T
    from wmel_jax.converters.convert import convert

    model = T.build_upstream(48, 6, 2, seed=0)
    src = tmp / "size48.pt"
    T.save_upstream(model, src)
    n_params = sum(p.numel() for n, p in model.named_parameters() if p.device.type != "meta")
    del model
    dst = tmp / "size48.safetensors"
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        convert(src, dst, force=True)
        times.append(time.perf_counter() - t)
    cli_times = []
    for _ in range(max(1, repeats // 2)):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "wmel_jax", "convert", str(src), "-o", str(dst), "--force"],
                       check=True, capture_output=True, env=_env(), cwd=REPO)
        cli_times.append(time.perf_counter() - t)
    return {
        "model_size": 48,
        "checkpoint_bytes": src.stat().st_size,
        "saved_parameters_incl_target_q": int(n_params),
        "convert_in_process_s": {"median": _median(times), "all": times},
        "convert_cli_fresh_process_s": {"median": _median(cli_times), "all": cli_times},
        "target_s": 30.0,
    }


def bench_load(tmp: Path, repeats: int) -> dict:
    from wmel_jax.converters import tdmpc2_torch as T
    from wmel_jax.converters.convert import convert_checkpoint

    out = {}
    for name, build, save in (
        ("upstream_size5", lambda: T.build_upstream(5, 6, 2, seed=0), T.save_upstream),
        ("adapter_size5", lambda: T.build_adapter(5, 6, 2, seed=0),
         lambda m, p: T.save_adapter(m, p, action_set=[[1.0, 0.0], [0.0, 1.0]])),
    ):
        src = tmp / f"{name}.pt"
        save(build(), src)
        dst = convert_checkpoint(src, tmp / f"{name}.safetensors")
        runs = []
        for _ in range(repeats):
            proc = subprocess.run([sys.executable, "-c", _LOAD_SCRIPT, str(dst)], check=True,
                                  capture_output=True, text=True, env=_env(), cwd=REPO)
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        out[name] = {
            "file_bytes": dst.stat().st_size,
            **{key: {"median": _median([r[key] for r in runs]), "all": [r[key] for r in runs]}
               for key in runs[0]},
            "target_load_s": 1.0,
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", type=Path, default=RESULTS / "convert_load.json")
    args = parser.parse_args()
    import jax

    with tempfile.TemporaryDirectory() as tmp:
        result = {
            "benchmark": "convert_load",
            "machine": {"platform": platform.platform(), "python": platform.python_version(),
                        "cpus": os.cpu_count(), "jax": jax.__version__,
                        "jax_backend": jax.default_backend()},
            "repeats": args.repeats,
            "convert": bench_convert(Path(tmp), args.repeats),
            "load": bench_load(Path(tmp), args.repeats),
        }
    from wmel_jax.fileio import write_json

    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.output, result)
    c = result["convert"]
    print(f"convert size 48: median {c['convert_in_process_s']['median']:.2f} s in process, "
          f"{c['convert_cli_fresh_process_s']['median']:.2f} s as a fresh CLI process (target < 30 s)")
    for name, r in result["load"].items():
        print(f"load {name}: wmel_jax.load median {r['load_s']['median']:.3f} s (target < 1 s); "
              f"import {r['import_s']['median']:.2f} s; first encode {r['first_encode_s']['median']:.3f} s, "
              f"second {r['second_encode_s']['median'] * 1e3:.1f} ms")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
