"""The command line: ``LightningCLI`` over :class:`LitInverse` and :class:`MatrixDataModule`.

``python train.py fit --config configs/seed_random.yaml`` runs the post's first experiment;
every run also gets :class:`RunOutputs` (configurable under ``outputs:``) and
:class:`ResumableCheckpoint` (``checkpoint:``).
"""

from pathlib import Path
from typing import List, Optional

from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

from gdinv_modules.cli.exit import exit_on_user_error
from gdinv_modules.training.callbacks import ResumableCheckpoint
from gdinv_modules.training.datamodule import MatrixDataModule
from gdinv_modules.training.lit_inverse import LitInverse
from gdinv_modules.training.run_outputs import RunOutputs

__all__ = ["InverseCLI", "main", "newest_last_checkpoint"]


def newest_last_checkpoint(run_root: Path) -> Optional[Path]:
    """The newest ``last*.ckpt`` in any ``version_*/checkpoints`` of a run (``runs/NAME``).

    Each run of ``train.py`` gets a new log directory (``runs/NAME/version_N``), so a run killed
    halfway leaves its checkpoints in ``version_N`` while its restart writes ``version_N+1``.

    Example:
        >>> import tempfile
        >>> newest_last_checkpoint(Path(tempfile.mkdtemp())) is None
        True
    """
    found = list(run_root.glob("version_*/checkpoints/last*.ckpt"))
    return max(found, key=lambda path: path.stat().st_mtime) if found else None


class InverseCLI(LightningCLI):
    """``LightningCLI`` with callbacks that every run gets: the run's outputs (``outputs:``) and
    resumable checkpoints (``checkpoint:``, ``last.ckpt`` every 1000 steps); ``--ckpt_path
    last`` continues the newest ``last.ckpt`` of any version of the run."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(RunOutputs, "outputs")
        parser.add_lightning_class_args(ResumableCheckpoint, "checkpoint")

    def before_fit(self) -> None:
        config = self.config_init[self.subcommand]
        log_dir = self.trainer.log_dir
        if config.get("ckpt_path") == "last" and log_dir is not None:
            found = newest_last_checkpoint(Path(log_dir).parent)
            if found is not None:
                config["ckpt_path"] = str(found)


def main(args: Optional[List[str]] = None) -> None:
    """Run the CLI; an error in the user's input is printed as one line and exits with 2."""
    with exit_on_user_error():
        InverseCLI(LitInverse, MatrixDataModule, args=args, auto_configure_optimizers=False)
