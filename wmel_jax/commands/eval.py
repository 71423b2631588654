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
        "--episode-ids", metavar="F.npy",
        help="with --states: (N,) integer labels saying which states belong together (e.g. one rollout); the "
        "metrics' intervals resample these groups whole (default: each state on its own; sampled states: "
        "their rollout episodes of 25)",
    )
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
    parser.add_argument(
        "--cpg", action="store_true",
        help="also plan with each model and with the oracle (wmel-jax cpg, random shooting by default) and pair "
        "each cell with its gap, instead of --downstream files",
    )
    parser.add_argument("--cpg-episodes", type=int, default=300, metavar="N", help="with --cpg: episodes (300)")
    parser.add_argument("--cpg-planner", default="random-shooting", metavar="PLANNER",
                        help="with --cpg: random-shooting (default) or cem")
    parser.add_argument("--cpg-horizon", type=int, default=500, metavar="T", help="with --cpg: env steps (500)")
    parser.add_argument("--cpg-output", metavar="OUT",
                        help="with --cpg: write the CPG JSONs too (a file for one model, a folder for several)")
    parser.add_argument("-o", "--output", metavar="report.json", help="write the JSON report here")
    parser.add_argument("--figure", metavar="F.png",
                        help="draw the metrics with their intervals here (.png, .pdf or .svg, by the extension)")
    parser.add_argument("--allow-skips", action="store_true",
                        help="exit 0 even when some models were skipped (default: 1, after writing the report)")
    parser.add_argument("--force", action="store_true",
                        help="replace output files that exist (an output is never an input, nor another output)")
    _common.add_runtime_arguments(parser)
    _common.add_output_arguments(parser)
    _common.add_distributed_arguments(parser, split=True)


def _cpg_options(args: argparse.Namespace):
    """The ``--cpg`` run's options (None without --cpg); its seed is the evaluation's."""
    if not args.cpg:
        from wmel_jax.errors import WmelError

        if args.cpg_output:
            raise WmelError("--cpg-output needs --cpg")
        return None
    from wmel_jax.planning.cpg import CPGOptions

    return CPGOptions(models=args.models, planner=args.cpg_planner, episodes=args.cpg_episodes, seed=args.seed,
                      horizon=args.cpg_horizon, output=args.cpg_output, precision=args.precision)


def run(args: argparse.Namespace) -> int:
    from wmel_jax.commands import _common

    if args.figure:
        from wmel_jax.figure import figure_format

        figure_format(args.figure)  # an unknown extension is refused before anything runs
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
        episode_ids=args.episode_ids,
        split=args.split,
        force=args.force,
        cpg=_cpg_options(args),
    )
    from wmel_jax import kernel_cache
    from wmel_jax.distributed import is_writer
    from wmel_jax.progress import Progress

    writer = is_writer()  # process 0 of a distributed run reports, prints and writes for all
    progress = Progress(quiet=args.quiet or not writer, cached=kernel_cache.get_directory() is not None)
    report = run_eval(opts, progress=progress)
    skipped = bool(report.get("skipped")) and not args.allow_skips
    if not writer:  # the same exit status as process 0's (every process skipped the same models)
        return 1 if skipped else 0
    sys.stdout.write(format_table(report, timings=args.timings))
    for what, path in (("report", args.output), ("figure", args.figure), ("states", args.save_states)):
        if path:
            print(f"wrote {what}: {path}")
    if skipped:
        n = len(report["skipped"])
        print(f"wmel-jax: {n} model(s) skipped (listed above); exit status 1 (--allow-skips: 0)", file=sys.stderr)
        return 1
    return 0
