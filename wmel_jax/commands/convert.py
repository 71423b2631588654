"""``wmel-jax convert``: a torch TD-MPC2 checkpoint -> a wmel-jax model file, once."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "convert a torch TD-MPC2 or DreamerV3 checkpoint (.pt) to a wmel-jax model file (needs the 'convert' extra)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", metavar="SRC.pt",
                        help="torch checkpoint: upstream TD-MPC2 agent, adapter schema, or DreamerV3 "
                        "(NM512/dreamerv3-torch latest.pt)")
    parser.add_argument(
        "-o", "--output", metavar="DST",
        help="output file (default: SRC with the suffix .safetensors)",
    )
    parser.add_argument(
        "--env", metavar="TASK",
        help="task the model is for, e.g. cartpole-swingup (default: the checkpoint's meta, "
        "else inferred from obs/action dims when unambiguous; multitask: the task to select)",
    )
    parser.add_argument(
        "--frame-skip", type=int, metavar="N",
        help="env steps per model step (default: meta.frame_skip, else 2 for upstream "
        "TD-MPC2 checkpoints and 1 for adapter ones; DreamerV3: the config's action_repeat, else 2)",
    )
    parser.add_argument(
        "--dreamer-config", metavar="F",
        help="DreamerV3 only: a YAML/JSON mapping of upstream configs.yaml keys the run used, for what the "
        "tensor shapes cannot tell (dyn_discrete, act, unimix_ratio, encoder.symlog_inputs, action_repeat); "
        "default: upstream's dmc_proprio values",
    )
    parser.add_argument("--force", action="store_true", help="replace DST if it exists")


def run(args: argparse.Namespace) -> int:
    from wmel_jax.converters.convert import convert

    src = Path(args.src)
    dst = Path(args.output) if args.output else src.with_suffix(".safetensors")
    result = convert(src, dst, env=args.env, frame_skip=args.frame_skip, force=args.force,
                     dreamer_config=args.dreamer_config)
    print(result.summary())
    return 0
