"""Draw the post's figure from finished runs: ``python -m gdinv_modules.cli.figure RUN RUN``.

Each RUN is a log directory that :class:`~gdinv_modules.training.run_outputs.RunOutputs` wrote
(it reads ``losses.csv``). With two runs and no ``--labels``, the post's legend is used.
"""

import argparse
from pathlib import Path
from typing import List, Optional

from gdinv_modules.core.errors import exit_on_user_error
from gdinv_modules.io.losses_csv import read_losses_table
from gdinv_modules.io.plotting import plot_losses

__all__ = ["main", "POST_TITLE", "POST_LABELS"]

# The post's figure: its title and legend.
POST_TITLE = (
    "How fast does the gradient algorithm converge?\n"
    "Answer: It depends, for the Simple Diagonal Matrix it converges faster"
)
POST_LABELS = ("Random Matrix, Momentum=0.9", "Simple Diagonal Matrix, Momentum=0.9")


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gdinv_modules.cli.figure", description=__doc__)
    parser.add_argument("runs", nargs="+", type=Path, help="log directories of finished runs")
    parser.add_argument(
        "--output",
        "-o",
        type=Path,
        default=Path("figure.png"),
        help="the PNG to write (never overwritten; default figure.png)",
    )
    parser.add_argument("--labels", nargs="+", help="one legend entry per run")
    parser.add_argument("--title", default=POST_TITLE, help="the figure's title")
    args = parser.parse_args(argv)
    labels = args.labels
    if labels is None:
        labels = list(POST_LABELS) if len(args.runs) == 2 else [str(run) for run in args.runs]
    if len(labels) != len(args.runs):
        parser.error(f"{len(args.runs)} runs but {len(labels)} labels")
    with exit_on_user_error():
        tables = {
            label: read_losses_table(run / "losses.csv")
            for label, run in zip(labels, args.runs, strict=True)
        }
        plot_losses(
            {label: losses for label, (_, losses) in tables.items()},
            args.output,
            title=args.title,
            steps={label: steps for label, (steps, _) in tables.items()},
        )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
