"""The command line: ``LightningCLI`` over :class:`LitInverse` and :class:`MatrixDataModule`.

``python train.py fit --config configs/seed_random.yaml`` runs the post's first experiment;
every run also gets :class:`RunOutputs` (configurable under ``outputs:``) and
:class:`ResumableCheckpoint` (``checkpoint:``).
"""

import logging
import sys
import warnings
from pathlib import Path
from typing import Any, Dict, List, NoReturn, Optional, Set

from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

from gdinv_modules.cli.exit import exit_on_user_error
from gdinv_modules.training.callbacks import ResumableCheckpoint
from gdinv_modules.training.datamodule import MatrixDataModule
from gdinv_modules.training.lit_inverse import LitInverse
from gdinv_modules.training.run_outputs import RunOutputs

__all__ = ["InverseCLI", "main", "newest_last_checkpoint", "OneLineErrorParser"]

HELP_POINTER = "see: python train.py fit --help"
# Lightning's notices that a user of train.py cannot act on (our own warnings stay).
KNOWN_HARMLESS = ".*(LeafSpec|litlogger|does not have many workers|log_every_n_steps).*"


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


class OneLineErrorParser(LightningArgumentParser):
    """A bad option or config: one ``error:`` line that names it, then a pointer to ``--help``,
    instead of the usage text first."""

    def error(self, message: str, ex: Optional[Exception] = None) -> NoReturn:
        text = " ".join(line.strip() for line in str(message).splitlines() if line.strip())
        sys.stderr.write(f"error: {text}\n{HELP_POINTER}\n")
        raise SystemExit(2)


class InverseCLI(LightningCLI):
    """``LightningCLI`` with callbacks that every run gets: the run's outputs (``outputs:``) and
    resumable checkpoints (``checkpoint:``, ``last.ckpt`` every 1000 steps); ``--ckpt_path
    last`` continues the newest ``last.ckpt`` of any version of the run."""

    @staticmethod
    def subcommands() -> Dict[str, Set[str]]:
        """Only ``fit``: an inversion has nothing to validate, test or predict."""
        return {"fit": {"model", "train_dataloaders", "val_dataloaders", "datamodule"}}

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
    """Run the CLI; an error in the user's input is printed as one line and exits with 2.
    Lightning's informational chatter (the model summary of a one-parameter model, tips,
    known-harmless deprecations) is left out; the run's summary and our warnings stay."""
    names = ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric")
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    options: Dict[str, Any] = dict(
        args=args,
        auto_configure_optimizers=False,
        parser_class=OneLineErrorParser,
        trainer_defaults={"enable_model_summary": False},
    )
    try:
        for logger in loggers:
            logger.setLevel(logging.WARNING)
        with warnings.catch_warnings(), exit_on_user_error():
            warnings.filterwarnings("ignore", message=KNOWN_HARMLESS)
            InverseCLI(LitInverse, MatrixDataModule, **options)
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
