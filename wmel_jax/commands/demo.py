"""``wmel-jax demo``: evaluate the shipped example models; tables, reports and a figure."""

from __future__ import annotations

import argparse

HELP = ("evaluate the seven shipped example models (3 tasks x good/weak TD-MPC2, and a DreamerV3 for cartpole): "
        "tables, JSON reports, a PNG figure")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from wmel_jax.commands import _common

    parser.add_argument("--out", default="wmel-demo", metavar="DIR",
                        help="where the reports and demo.png go (default ./wmel-demo)")
    parser.add_argument("--n-states", type=int, default=150, metavar="N", help="sampled states per task (default 150)")
    parser.add_argument("--k-steps", type=int, default=10, metavar="K", help="M2 horizon (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    parser.add_argument("--force", action="store_true",
                        help="replace the reports and figure of an earlier demo in the same folder")
    _common.add_runtime_arguments(parser)
    _common.add_device_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from wmel_jax.commands import _common

    _common.configure_runtime(args)
    from wmel_jax.demo import run_demo

    _, written = run_demo(
        args.out,
        n_states=args.n_states,
        k_steps=args.k_steps,
        seed=args.seed,
        precision=args.precision,
        chunk_states=args.chunk_states,
        progress=_common.progress_bar(),
        force=args.force,
    )
    print()
    for path in written:
        print(f"wrote {path}")
    return 0
