"""The command line: ``LightningCLI`` over :class:`LitInverse` and :class:`MatrixDataModule`.

``python train.py fit --config configs/seed_random.yaml`` runs the post's first experiment;
``python train.py fit --data.kind file --data.path M.npy`` inverts one's own matrix as
:func:`invert` would: lr and momentum ``auto``, from zeros, to the dtype's tol
(:data:`RUN_DEFAULTS`), in the file's own precision. Every run also gets :class:`RunOutputs`
(configurable under ``outputs:``) and :class:`ResumableCheckpoint` (``checkpoint:``).
"""

import logging
import re
import sys
import warnings
from pathlib import Path
from typing import Any, Dict, List, NoReturn, Optional, Set

import yaml  # type: ignore[import-untyped]
from jsonargparse import Namespace
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

from gdinv_modules.core.errors import exit_on_user_error
from gdinv_modules.training.callbacks import ResumableCheckpoint
from gdinv_modules.training.datamodule import MatrixDataModule
from gdinv_modules.training.lit_inverse import LitInverse
from gdinv_modules.training.run_outputs import RunOutputs

__all__ = [
    "InverseCLI",
    "main",
    "newest_last_checkpoint",
    "OneLineErrorParser",
    "RUN_DEFAULTS",
    "run_name",
    "plain_help",
]

HELP_POINTER = "see: python train.py fit --help"
FIT_USAGE = (
    "usage: train.py fit [--config FILE] [--model.OPTION VALUE] [--data.OPTION VALUE]\n"
    "                    [--outputs.OPTION VALUE] [--checkpoint.OPTION VALUE]\n"
    "                    [--trainer.OPTION VALUE] [--ckpt_path last|PATH] [--print_config]"
)
TRAINER_SECTION = "Customize every aspect of training"  # Lightning's Trainer options
ROLE = re.compile(r":(?:class|func|meth|attr|mod|data|exc|obj):`(~?)([^`]*)`")
MATH = re.compile(r":math:`([^`]*)`")
LITERAL = re.compile(r"``([^`]*)``")
MATRIX_OPTION = re.compile(r"^  --model\.matrix\b.*\n(?:^ {6,}.*\n)*", re.MULTILINE)
TEX_SYMBOLS = {
    "\\lVert ": "||",
    "\\rVert": "||",
    "\\lambda": "λ",
    "\\beta": "β",
    "\\eta": "η",
    "\\sigma": "σ",
    "\\le ": "≤ ",
    "\\ge ": "≥ ",
}
# What a run without a config gets: invert()'s settings and its stopping policy (a config
# states its own, as the post's seed_*.yaml do: lr 0.9, momentum 0.9, the random first guess,
# no tol, no refinement, windows of 100 steps).
RUN_DEFAULTS: Dict[str, Any] = {
    "model.lr": "auto",
    "model.momentum": "auto",
    "model.init": "zeros",
    "model.tol": "auto",
    "model.refine": True,
    "model.steps_per_window": "auto",
    "trainer.max_steps": 100_000,
}
# Lightning's notices that a user of train.py cannot act on (our own warnings stay).
KNOWN_HARMLESS = (
    ".*(LeafSpec|litlogger|does not have many workers|log_every_n_steps|No seed found"
    "|tensorboardX).*"
)


def run_name(config: Namespace) -> str:
    """The NAME of ``runs/NAME``: the first config file's stem, else the matrix file's, else
    the matrix kind.

    Example:
        >>> run_name(Namespace(config=None, data=Namespace(kind="spd", path=None)))
        'spd'
    """
    configs = config.get("config") or []
    if configs:
        return Path(str(configs[0])).stem
    return Path(config.data.path).stem if config.data.path else str(config.data.kind)


def newest_last_checkpoint(run_root: Path) -> Optional[Path]:
    """The newest ``last*.ckpt`` in ``checkpoints`` or any ``version_*/checkpoints`` of a run
    (``runs/NAME``, or an ``--outputs.output_dir``).

    Each run of ``train.py`` gets a new log directory (``runs/NAME/version_N``), so a run killed
    halfway leaves its checkpoints in ``version_N`` while its restart writes ``version_N+1``.

    Example:
        >>> import tempfile
        >>> newest_last_checkpoint(Path(tempfile.mkdtemp())) is None
        True
    """
    found = [
        *run_root.glob("checkpoints/last*.ckpt"),
        *run_root.glob("version_*/checkpoints/last*.ckpt"),
    ]
    return max(found, key=lambda path: path.stat().st_mtime) if found else None


def plain_help(text: str) -> str:
    r"""The help text without reStructuredText markup: ``:class:`~a.B``` reads ``B``,
    ``:math:`\beta``` reads ``β``, a literal loses its double backquotes.

    Example:
        >>> plain_help("lr :math:`\\eta > 0`, :class:`~gdinv_modules.HeavyBallTuner`, ``'auto'``")
        "lr η > 0, HeavyBallTuner, 'auto'"
    """
    text = ROLE.sub(lambda m: m.group(2).split(".")[-1] if m.group(1) else m.group(2), text)
    text = MATH.sub(lambda m: m.group(1), text)
    for command, symbol in TEX_SYMBOLS.items():
        text = text.replace(command, symbol)
    return LITERAL.sub(lambda m: m.group(1), text)


class OneLineErrorParser(LightningArgumentParser):
    """A bad option or config: one ``error:`` line that names it, then a pointer to ``--help``,
    instead of the usage text first. ``fit --help`` shows the project's options first, then
    Lightning's Trainer, in plain text (:func:`plain_help`)."""

    def format_help(self, *args: Any, **kwargs: Any) -> str:
        sections = re.split(r"\n\n(?=\S)", super().format_help(*args, **kwargs))
        trainer = [s for s in sections if s.startswith(TRAINER_SECTION)]
        if trainer:  # the fit subcommand: its long usage line gives way to a short one
            sections = [s for s in sections if s not in trainer and not s.startswith("usage:")]
            sections = [FIT_USAGE, *sections, *trainer]
        # M itself comes from --data, never from the command line: its entries only confuse.
        text = MATRIX_OPTION.sub("", "\n\n".join(sections))
        return plain_help(text)

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
        parser.set_defaults(RUN_DEFAULTS)

    def before_instantiate_classes(self) -> None:
        """One run, one place: without a logger of its own a run logs with a ``CSVLogger`` to
        ``runs/NAME/version_N`` (NAME: the config's or the matrix file's stem, else the kind);
        ``--outputs.output_dir DIR`` puts the logger's files, the checkpoints and
        ``config.yaml`` in DIR, beside the outputs."""
        config = self.config[self.subcommand]
        if config.trainer.logger in (None, True):
            config.trainer.logger = Namespace(
                class_path="pytorch_lightning.loggers.CSVLogger",
                init_args=Namespace(save_dir="runs", name=run_name(config)),
            )
        output_dir = config.outputs.output_dir
        if output_dir is None:
            return
        config.trainer.default_root_dir = output_dir
        loggers = config.trainer.logger
        for logger in loggers if isinstance(loggers, list) else [loggers]:
            init_args = getattr(logger, "init_args", None)
            if init_args is not None and "save_dir" in init_args:
                init_args.save_dir, init_args.name, init_args.version = output_dir, "", ""
        if config.get("ckpt_path") == "last":  # a resumed run writes its config.yaml again
            self.save_config_kwargs["overwrite"] = True

    def before_fit(self) -> None:
        for callback in self.trainer.callbacks:  # before the loggers make their directories
            if isinstance(callback, RunOutputs):
                callback.claim(self.trainer)
        config = self.config_init[self.subcommand]
        log_dir = self.trainer.log_dir
        if config.get("ckpt_path") == "last" and log_dir is not None:
            root = Path(log_dir) if config.outputs.output_dir else Path(log_dir).parent
            found = newest_last_checkpoint(root)
            if found is not None:
                config["ckpt_path"] = str(found)


def check_config_files(args: List[str]) -> None:
    """A config file that is not valid YAML: one ``error:`` line naming the file, the line and
    the column, and exit 2 (the parser's own message names only ``<unicode string>``)."""
    for index, arg in enumerate(args):
        if arg in ("-c", "--config") and index + 1 < len(args):
            name = args[index + 1]
        elif arg.startswith("--config="):
            name = arg.partition("=")[2]
        else:
            continue
        path = Path(name)
        if not path.is_file():
            continue  # the parser names a missing file itself
        try:
            yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(error, "problem", None) or str(error).splitlines()[0]
            sys.stderr.write(f"error: {path}{where}: {problem}\n{HELP_POINTER}\n")
            raise SystemExit(2) from None


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
    check_config_files(sys.argv[1:] if args is None else args)
    try:
        for logger in loggers:
            logger.setLevel(logging.WARNING)
        with warnings.catch_warnings(), exit_on_user_error():
            warnings.filterwarnings("ignore", message=KNOWN_HARMLESS)
            InverseCLI(LitInverse, MatrixDataModule, **options)
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
