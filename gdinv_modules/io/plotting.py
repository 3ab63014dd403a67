"""Loss curves on a log scale, drawn with matplotlib's object API (no global pyplot state)."""

from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import torch
from matplotlib.figure import Figure
from torch import Tensor

from gdinv_modules.io.atomic import atomic_path

__all__ = ["plot_losses", "POST_TITLE", "POST_LABELS"]

POST_TITLE = (
    "How fast does the gradient algorithm converge?\n"
    "Answer: It depends, for the Simple Diagonal Matrix it converges faster"
)
POST_LABELS = ("Random Matrix, Momentum=0.9", "Simple Diagonal Matrix, Momentum=0.9")


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
