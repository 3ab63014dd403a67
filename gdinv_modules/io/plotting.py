"""Loss curves on a log scale, drawn with matplotlib's object API (no global pyplot state).

:func:`plot_losses` draws curves side by side (the post's figure); :func:`plot_run` draws one
run against its theory: the predicted rate, the tolerance, the step that reached it and the
floor the loss stops at.
"""

import math
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import torch
from matplotlib.figure import Figure
from torch import Tensor

from gdinv_modules.core.report import ConvergenceReport
from gdinv_modules.io.atomic import atomic_path

__all__ = ["plot_losses", "plot_run", "run_figure"]

PLATEAU_SPAN = 10.0  # a loss within this factor of the run's last tenth is on the plateau
CUT_MARGIN = 0.25  # the axis runs this fraction past the step that ends the descent


def plot_losses(
    curves: Mapping[str, Union[Tensor, Sequence[float]]],
    path: Union[str, Path],
    *,
    title: Optional[str] = None,
    overwrite: bool = False,
    steps: Optional[Mapping[str, Union[Tensor, Sequence[int]]]] = None,
) -> Path:
    """Draw each loss curve against its step on a log-scale y axis and save the PNG atomically.

    ``steps`` gives a curve's steps where they are not 0, 1, 2, ... (a run's ``loss_every``).

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "loss.png"
        >>> plot_losses({"run": [1.0, 0.1, 0.01]}, path).exists()
        True
    """
    figure = Figure(figsize=(8, 5), dpi=100)
    axes = figure.subplots()
    for label, losses in curves.items():
        values = torch.as_tensor(losses, dtype=torch.float64).flatten()
        # A loss of exactly 0 cannot be drawn on a log axis: it is shown at the smallest double.
        values = values.clamp_min(torch.finfo(torch.float64).tiny)
        where = (steps or {}).get(label)
        x = range(len(values)) if where is None else torch.as_tensor(where).numpy()
        axes.plot(x, values.numpy(), label=label)
    axes.set_yscale("log")
    axes.set_xlabel("Iterations")
    axes.set_ylabel("Losses")
    if title:
        axes.set_title(title)
    axes.legend()
    axes.grid(True, which="major", alpha=0.3)
    figure.tight_layout()
    with atomic_path(path, overwrite=overwrite) as tmp:
        figure.savefig(tmp, format="png")
    return Path(path)


def run_figure(
    losses: Tensor,  # shape: (kept, ...)
    report: ConvergenceReport,
    k: int,
    *,
    steps: Optional[Tensor] = None,  # shape: (kept,)
    dtype: str = "",
    title: str = "Loss to the identity per step",
) -> Figure:
    r"""One run's loss against what the theory says of it.

    Drawn: the measured loss (the mean over a batch; for a rank-deficient M the loss above its
    rank floor :math:`f = (k-r)/k^2`, which the title names); the predicted rate as a dashed
    line, :math:`L_t = L_a \rho^{2(t-a)}` from the step :math:`a` where the loss fell to a
    hundredth of its start (:math:`\rho` the report's ``predicted_rate``, per step of the
    residual); the tolerance as the loss it means, :math:`\mathrm{tol}^2/k`, and the step that
    reached it; the plateau the dtype's rounding leaves, where the run reached it (measured: the
    median loss of the run's last tenth). A run that went on along its plateau is cut at a
    quarter past the plateau's start, with a note. For a batch, the rate and the step are the
    worst matrix's. A run without a descent step (skipped: refinement's scaled restart took
    fewer steps) has no curve: the figure says why, and what refinement reached.

    Example:
        >>> losses = torch.tensor([0.5 ** (2 * t) for t in range(60)]).clamp_min(1e-14)
        >>> report = ConvergenceReport.from_run(
        ...     losses, torch.eye(2) * 2, "left", torch.tensor(0.25), torch.tensor(0.0),
        ...     1e-5, torch.tensor(1e-7))
        >>> figure = run_figure(losses, report, 2, dtype="float64")
        >>> [line.get_label() for line in figure.axes[0].get_lines()][:2]
        ['loss', 'theory: residual × 0.5 per step']
    """
    floors = torch.tensor(report.loss_floor, dtype=torch.float64)
    floor = float(floors.max()) if len(floors) else 0.0
    # A rank-deficient M's loss ends at its floor: what converges is the loss above it.
    per_step = losses.double().cpu().reshape(len(losses), max(len(floors), 1))  # also no step
    values = (per_step - floors).mean(dim=1)
    x = torch.arange(len(values)) if steps is None else torch.as_tensor(steps).cpu()
    x = x.double()
    figure = Figure(figsize=(8, 5), dpi=100)
    axes = figure.subplots()
    # The loss above a floor is resolved to the dtype's rounding of the floor, no finer.
    tiny = max(torch.finfo(torch.float64).tiny, torch.finfo(losses.dtype).eps * floor)
    values = values.clamp_min(tiny)
    label = "loss" if not floor else "loss above the rank floor"
    axes.plot(x.numpy(), values.numpy(), label=label)
    axes.set_yscale("log")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss ||E - I||²/k²" if not floor else "loss - (k - r)/k²")
    if not len(values):
        axes.set_axis_off()
        axes.text(0.5, 0.5, _no_descent(report), transform=axes.transAxes, ha="center",
                  va="center", wrap=True)  # fmt: skip
        axes.set_title(title)
        return figure
    worst = max(range(len(report.final_residual)), key=lambda i: report.final_residual[i])
    rate = report.predicted_rate[worst]
    last = float(x[-1])

    # Where the run ends its descent: the plateau's start, or the step that reached tol.
    plateau = max(float(values[-max(1, len(values) // 10) :].median()), tiny)
    near = (values <= PLATEAU_SPAN * plateau).nonzero()
    plateau_start = float(x[near[0, 0]]) if len(near) else last
    on_plateau = plateau_start <= 0.5 * last
    reached = [step for step in report.steps_to_tol if step is not None]
    reach = max(reached) if len(reached) == len(report.steps_to_tol) else None
    end = max(plateau_start if on_plateau else last, reach or 0)
    cut = min(last, math.ceil(end * (1 + CUT_MARGIN)) + 1)

    if rate is not None and 0 < rate < 1 and values[0] > 0:
        first = (values <= values[0] / 100).nonzero()
        anchor = int(first[0, 0]) if len(first) else 0
        start = float(x[anchor])
        t = torch.linspace(start, cut, 200, dtype=torch.float64)
        theory = values[anchor] * rate ** (2 * (t - start))
        keep = theory >= 0.1 * plateau
        axes.plot(
            t[keep].numpy(),
            theory[keep].numpy(),
            "--",
            color="tab:gray",
            label=f"theory: residual × {rate:.4g} per step",
        )
    tol_loss = report.tol**2 / k
    axes.axhline(tol_loss, color="tab:green", linestyle=":", label=f"tol {report.tol:g}")
    if reach is not None:
        axes.axvline(reach, color="tab:green", alpha=0.5)
        axes.plot([reach], [tol_loss], "o", color="tab:green", label=f"tol reached, step {reach}")
    if on_plateau:
        name = f"{dtype}'s" if dtype else "rounding"
        axes.axhline(
            plateau, color="tab:red", linestyle="-.", label=f"{name} floor (plateau) {plateau:.3g}"
        )
    if floor:
        rank = report.rank[worst]
        title = f"{title}\nrank {rank} of {k}: rank floor (k - r)/k² = {floor:.4g} taken off"
    axes.set_title(title)
    if cut < last:
        axes.set_xlim(-0.02 * cut, cut)
        axes.annotate(
            f"not shown: steps {cut:.0f} to {last:.0f}, on the plateau",
            xy=(1, 0),
            xycoords="axes fraction",
            xytext=(-4, 4),
            textcoords="offset points",
            ha="right",
            va="bottom",
            fontsize=8,
        )
    axes.legend()
    axes.grid(True, which="major", alpha=0.3)
    figure.tight_layout()
    return figure


def _no_descent(report: ConvergenceReport) -> str:
    """Why a run took no descent step, and what refinement reached: the no-curve figure's note."""
    why = {
        "skipped": "descent skipped: by M's singular values, refinement's scaled restart\n"
        "takes fewer steps than descent to its hand-over",
        "tol": "no descent step: X met the target as it started",
    }.get(report.descent_stop, f"no descent step (stop: {report.descent_stop})")
    if report.refine_steps:
        residual = max(report.final_residual)
        why += f"\n\n{report.refine_steps} refinement steps, residual ||XM - I||/√k {residual:.3g}"
    return why


def plot_run(
    losses: Tensor,  # shape: (kept, ...)
    report: ConvergenceReport,
    k: int,
    path: Union[str, Path],
    *,
    steps: Optional[Tensor] = None,  # shape: (kept,)
    dtype: str = "",
    overwrite: bool = False,
) -> Path:
    """Draw :func:`run_figure` and save the PNG atomically."""
    figure = run_figure(losses, report, k, steps=steps, dtype=dtype)
    with atomic_path(path, overwrite=overwrite) as tmp:
        figure.savefig(tmp, format="png")
    return Path(path)
