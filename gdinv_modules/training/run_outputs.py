"""``RunOutputs``: what a finished run leaves in its log directory."""

import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Optional, Set, cast

import pytorch_lightning as pl
import torch

from gdinv_modules.core.errors import OutputExistsError
from gdinv_modules.core.formulation import as_formulation
from gdinv_modules.core.functional import identity_mse
from gdinv_modules.core.report import ConvergenceReport
from gdinv_modules.io.atomic import atomic_path
from gdinv_modules.io.losses_csv import write_losses_csv
from gdinv_modules.io.matrix_io import save_matrix
from gdinv_modules.io.plotting import plot_run

if TYPE_CHECKING:  # the callback reads LitInverse's state
    from gdinv_modules.training.lit_inverse import LitInverse

__all__ = ["RunOutputs", "OUTPUT_FILES"]

OUTPUT_FILES = ("inverse.pt", "inverse.npy", "losses.csv", "loss_curve.png", "summary.json")


class RunOutputsMixin:
    """The hooks and methods of :class:`RunOutputs`, for either Lightning package."""

    def __init__(self, *, plot: bool = True, output_dir: Optional[str] = None) -> None:
        self.plot = plot
        self.output_dir = output_dir
        self._start: Optional[float] = None
        self._made: Optional[Path] = None  # the topmost directory this run made
        self._found: Set[Path] = set()  # what the directory held before the run
        self._claimed = False
        self.summary: Dict[str, Any] = {}

    def directory(self, trainer: pl.Trainer) -> Path:
        """The directory the outputs go to. Under DDP ``trainer.log_dir`` is a broadcast, so
        every rank must call this."""
        return Path(self.output_dir or trainer.log_dir or trainer.default_root_dir)

    def claim(self, trainer: pl.Trainer) -> None:
        """Refuse a directory that holds an earlier run's outputs, and note what it holds, so
        that a failed run can take away what it made. ``setup`` calls it; ``train.py`` calls it
        earlier, before the Trainer's loggers make their directories."""
        if self._claimed:
            return
        directory = self.directory(trainer)
        existing = [name for name in OUTPUT_FILES if (directory / name).exists()]
        if existing:  # every rank sees the same files, so every rank stops
            raise OutputExistsError(
                f"{directory} holds an earlier run's outputs ({', '.join(existing)}); choose "
                "another directory or logger version"
            )
        top = directory.absolute()
        while not top.parent.exists():
            top = top.parent
        self._made = None if top.exists() else top
        self._found = set(directory.rglob("*")) if directory.exists() else set()
        self._claimed = True

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.claim(trainer)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._claimed = False

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        """A failed run leaves nothing behind; an interrupted one keeps its checkpoints."""
        claimed, self._claimed = self._claimed, False
        if not claimed or isinstance(exception, KeyboardInterrupt) or not trainer.is_global_zero:
            return
        if self._made is not None:
            shutil.rmtree(self._made, ignore_errors=True)
            return
        directory = self.directory(trainer)
        made = sorted(set(directory.rglob("*")) - self._found, key=lambda p: -len(p.parts))
        for path in made:  # the deepest first, so that a directory is empty when removed
            if path.is_dir() and not path.is_symlink():
                path.rmdir()
            else:
                path.unlink(missing_ok=True)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        directory = self.directory(trainer)
        if not trainer.is_global_zero:
            return
        model = cast("LitInverse", pl_module)
        wall_time = time.perf_counter() - (self._start or time.perf_counter())
        report = model.report()  # an SVD of M: once, for the summary and the plot
        self.summary = run_summary(model, report, trainer.global_step, wall_time)
        save_matrix(model.inverse, directory / "inverse.pt")
        save_matrix(model.inverse, directory / "inverse.npy")
        losses = model.losses
        write_losses_csv(losses, directory / "losses.csv", every=model.hparams.loss_every)
        if self.plot:
            plot_run(
                losses,
                report,
                model.module.order,
                directory / "loss_curve.png",
                steps=model.loss_steps,
                dtype=self.summary["dtype"],
            )
        with atomic_path(directory / "summary.json") as tmp:
            tmp.write_text(json.dumps(self.summary, indent=2) + "\n")
        print(format_summary(self.summary, directory))


def run_summary(
    pl_module: "LitInverse", report: ConvergenceReport, steps: int, wall_time: float
) -> Dict[str, Any]:
    """The numbers that tell how a run went (host syncs here, once, at the end)."""
    module = pl_module.module
    with torch.no_grad():
        product = module()
        full_rank = all(floor == 0 for floor in report.loss_floor)
        reference = (
            "inv" if full_rank and module.matrix_shape[0] == module.matrix_shape[1] else "pinv"
        )
        exact = getattr(torch.linalg, reference)(pl_module.matrix.double())
        return {
            "steps": steps,
            "mse": float(identity_mse(product)),
            "residual": max(report.final_residual),  # what tol judged, P in place of I
            "reference": reference,
            "max_abs_error": float((pl_module.inverse.double() - exact).abs().max()),
            "wall_time_s": wall_time,
            "matrix_shape": list(module.matrix_shape),
            "batch_shape": list(module.batch_shape),
            "dtype": str(module.inverse.dtype).replace("torch.", ""),
            "convergence": report.to_dict(),
            "hyperparameters": {
                key: value for key, value in pl_module.hparams.items() if not key.startswith("_")
            },
        }


def format_summary(summary: Dict[str, Any], directory: Path) -> str:
    """The summary as a few printed lines."""
    report = ConvergenceReport(**summary["convergence"])
    rows, cols = summary["matrix_shape"]
    formula = as_formulation(summary["hyperparameters"].get("formulation", "left")).label
    if any(report.loss_floor):  # a rank-deficient M: E is measured against the projector P
        formula = formula.replace("-I", "-P")
    unset = ""
    if summary["hyperparameters"].get("tol") is None:
        unset = f"none set: judged by {summary['dtype']}'s {report.tol:g}"
    elif summary["hyperparameters"].get("tol") == "auto":
        unset = f"auto: {summary['dtype']}'s {report.tol:g}"
    return "\n".join(
        [
            f"Inverse of a {rows} x {cols} matrix ({summary['dtype']}, "
            f"batch {tuple(summary['batch_shape'])}) after {summary['steps']} steps "
            f"in {summary['wall_time_s']:.2f} s",
            f"  mse (the metric)       {summary['mse']:.4e}",
            f"  {'residual ' + formula:<23}{summary['residual']:.4e}",
            f"  {'max |X - ' + summary['reference'] + '(M)|':<23}{summary['max_abs_error']:.4e}",
            *report.summary_lines(),
            *([f"  tol                    {unset}"] if unset else []),
            f"  outputs in             {directory}",
        ]
    )


class RunOutputs(RunOutputsMixin, pl.Callback):
    """Write a finished run's results into the Trainer's log directory and print a summary.

    Files: ``inverse.pt`` and ``inverse.npy`` (the trained X), ``losses.csv`` (the loss of
    every optimizer step, or of every ``loss_every``-th), ``loss_curve.png``
    (:func:`~gdinv_modules.io.plotting.plot_run`) and ``summary.json``. They are written
    atomically. A directory holding an earlier run's outputs is refused at setup, before any
    training, and a run that fails (an error, not a kill or Ctrl-C, which keep the checkpoints
    to resume from) takes away every file and directory it made.

    Args:
        plot: draw ``loss_curve.png``.
        output_dir: where to write; default the Trainer's ``log_dir``. ``train.py`` points its
            logger, checkpoints and ``config.yaml`` there too.
    """
