"""The command line: ``LightningCLI`` over :class:`LitInverse` and :class:`MatrixDataModule`.

``python train.py fit --config configs/seed_random.yaml`` runs the post's first experiment;
every run also gets :class:`RunOutputs` (configurable under ``outputs:``).
"""

import sys
from typing import List, Optional

from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

from gdinv_modules.checkpointing import ResumableCheckpoint
from gdinv_modules.datamodule import MatrixDataModule
from gdinv_modules.errors import GDInvError
from gdinv_modules.lit_inverse import LitInverse
from gdinv_modules.run_outputs import RunOutputs

__all__ = ["InverseCLI", "main"]


class InverseCLI(LightningCLI):
    """``LightningCLI`` with callbacks that every run gets: the run's outputs (``outputs:``) and
    resumable checkpoints (``checkpoint:``, ``last.ckpt`` every 1000 steps), so that
    ``--ckpt_path last`` continues a run that was killed."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(RunOutputs, "outputs")
        parser.add_lightning_class_args(ResumableCheckpoint, "checkpoint")


def main(args: Optional[List[str]] = None) -> None:
    """Run the CLI; an error in the user's input is printed as one line and exits with 2."""
    try:
        InverseCLI(LitInverse, MatrixDataModule, args=args, auto_configure_optimizers=False)
    except GDInvError as error:
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
        raise SystemExit(2) from None
