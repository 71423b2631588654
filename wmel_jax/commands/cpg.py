"""``wmel-jax cpg``: the downstream Counterfactual Planning Gap of world models, as batched kernels."""

from __future__ import annotations

import argparse
import sys

HELP = ("plan with each world model and with the MJX oracle on the same seeded episodes: success rates, the "
        "Counterfactual Planning Gap with its intervals and verdict (one CPG JSON per model)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from wmel_jax.commands import _common

    parser.add_argument(
        "models", nargs="+", metavar="MODEL",
        help="converted model file(s) with an observation decoder (adapter schema), or torch .pt checkpoints "
        "(converted on the fly when torch is installed)",
    )
    parser.add_argument("--env", metavar="TASK", help="task (default: the task recorded at conversion)")
    parser.add_argument("--planner", default="random-shooting", metavar="PLANNER",
                        help="random-shooting (default) or cem")
    parser.add_argument("--episodes", type=int, default=300, metavar="N",
                        help="paired episodes per arm (default 300)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the start states and the planners' draws (default 0)")
    parser.add_argument("--horizon", type=int, default=500, metavar="T",
                        help="env steps per episode, at most 10,000 (default 500)")
    parser.add_argument("--arms", default="oracle,learned", metavar="ARMS",
                        help="oracle, learned, or oracle,learned (default): one arm leaves the other's fields "
                        "and the gap null")
    parser.add_argument("-o", "--output", metavar="OUT",
                        help="write the CPG JSON here: a file for one model, a folder for several "
                        "(one <model>.cpg.json each)")
    parser.add_argument("--force", action="store_true", help="replace existing output files")
    parser.add_argument("--figure", metavar="F.png",
                        help="draw success rates with intervals and steps-to-success per arm here")
    sizes = parser.add_argument_group("planner sizes (SPEC section 9 defaults)")
    sizes.add_argument("--plan-horizon", type=int, default=15, metavar="H", help="actions per candidate (15)")
    sizes.add_argument("--candidates", type=int, default=50, metavar="C", help="random shooting: candidates (50)")
    sizes.add_argument("--cem-iterations", type=int, default=3, metavar="I", help="CEM: iterations (3)")
    sizes.add_argument("--cem-samples", type=int, default=24, metavar="S", help="CEM: samples per iteration (24)")
    sizes.add_argument("--cem-elites", type=int, default=6, metavar="K", help="CEM: elites (6)")
    sizes.add_argument("--cem-smoothing", type=float, default=0.1, metavar="A",
                       help="CEM: weight of the uniform distribution in each refit (0.1)")
    parser.add_argument("--chunk-episodes", type=int, default=None, metavar="E",
                        help="episodes in flight per kernel call; bounds memory (default 64 on CPU, 1024 on "
                        "accelerators); results do not depend on it")
    _common.add_runtime_arguments(parser, chunk_states=False)
    _common.add_output_arguments(parser)
    _common.add_distributed_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from wmel_jax.commands import _common

    _common.configure_runtime(args)
    from wmel_jax.planning.cpg import CPGOptions, format_cpg_table, run_cpg

    opts = CPGOptions(
        models=args.models,
        env=args.env,
        planner=args.planner,
        episodes=args.episodes,
        seed=args.seed,
        horizon=args.horizon,
        arms=args.arms,
        output=args.output,
        force=args.force,
        figure=args.figure,
        candidates=args.candidates,
        plan_horizon=args.plan_horizon,
        iterations=args.cem_iterations,
        samples=args.cem_samples,
        elites=args.cem_elites,
        smoothing=args.cem_smoothing,
        precision=args.precision,
        chunk_episodes=args.chunk_episodes,
    )
    from wmel_jax import kernel_cache
    from wmel_jax.distributed import is_writer
    from wmel_jax.progress import Progress

    writer = is_writer()  # process 0 of a distributed run prints, shows progress and writes for all
    progress = Progress(quiet=args.quiet or not writer, cached=kernel_cache.get_directory() is not None)
    reports = run_cpg(opts, progress=progress)
    if not writer:
        return 0
    for report in reports:
        sys.stdout.write(format_cpg_table(report, timings=args.timings))
    if args.output:
        print(f"wrote CPG JSON: {args.output}")
    if args.figure:
        print(f"wrote figure: {args.figure}")
    return 0
