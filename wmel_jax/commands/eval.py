"""``wmel-jax eval``: the metrics of one or many world models against the MJX oracle."""

from __future__ import annotations

import argparse
import sys

HELP = ("evaluate world models (M1 one-step error, M2 k-step divergence, M3 action-ranking agreement; "
        "latent one-step and k-step errors, reward-ranking agreement)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from wmel_jax.commands import _common

    parser.add_argument(
        "models", nargs="+", metavar="MODEL",
        help="converted model file(s) (wmel-jax convert), or torch .pt checkpoints (converted on the fly "
        "when torch is installed)",
    )
    parser.add_argument(
        "--env", metavar="TASK",
        help="task (default: the task recorded at conversion); picks the task of a multitask model",
    )
    parser.add_argument("--n-states", type=int, default=None, metavar="N",
                        help="sampled states (default 150; with --states, the file's rows)")
    parser.add_argument("--k-steps", type=int, default=None, metavar="K",
                        help="M2 horizon (default 10; with --action-sequence, the file's rows)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the state sample and M2's actions (default 0)")
    parser.add_argument("--states", metavar="F.npy", help="evaluate on these observations (N, obs_dim) instead of sampling")
    parser.add_argument("--action-sequence", metavar="F.npy", help="M2's actions (k, action_dim) instead of drawing them")
    parser.add_argument("--actions", metavar="F.npy", help="the action set (A, action_dim) (default: the checkpoint's, else the task's; "
                        "upstream checkpoints have none)")
    parser.add_argument("--save-states", metavar="F.npy", help="write the evaluated states, to rerun exactly with --states")
    parser.add_argument(
        "--downstream", nargs="+", metavar="F.json",
        help="one reference CPG JSON per model, in the same order: adds the gap and its correlation with each metric",
    )
    parser.add_argument(
        "--metrics", default="all", metavar="SPACES",
        help="metric spaces to compute, comma-separated: observation (M1, M2, M3: needs a decoder), latent "
        "(latent one-step and k-step errors), reward (reward-ranking agreement: needs a reward head), or all "
        "(default: every one the model has); the kernel does only the asked-for spaces' network work",
    )
    parser.add_argument("-o", "--output", metavar="report.json", help="write the JSON report here")
    parser.add_argument("--figure", metavar="F.png", help="draw M2 curves and M1/M3 bars here")
    parser.add_argument("--force", action="store_true",
                        help="replace output files that exist (an output is never an input, nor another output)")
    _common.add_runtime_arguments(parser)
    _common.add_distributed_arguments(parser, split=True)


def run(args: argparse.Namespace) -> int:
    from wmel_jax.commands import _common

    _common.configure_runtime(args)
    from wmel_jax.pipeline import EvalOptions, run_eval
    from wmel_jax.report import format_table

    opts = EvalOptions(
        models=args.models,
        env=args.env,
        n_states=args.n_states,
        k_steps=args.k_steps,
        seed=args.seed,
        states=args.states,
        action_sequence=args.action_sequence,
        actions=args.actions,
        save_states=args.save_states,
        downstream=args.downstream,
        output=args.output,
        figure=args.figure,
        precision=args.precision,
        chunk_states=args.chunk_states,
        metrics=args.metrics,
        split=args.split,
        force=args.force,
    )
    report = run_eval(opts, progress=_common.progress_bar())
    from wmel_jax.distributed import is_writer

    if not is_writer():  # process 0 of a distributed run prints and writes for all
        return 0
    sys.stdout.write(format_table(report))
    for what, path in (("report", args.output), ("figure", args.figure), ("states", args.save_states)):
        if path:
            print(f"wrote {what}: {path}")
    return 0
