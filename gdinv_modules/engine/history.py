"""``LossHistory``: the loss of every step (or every ``every``-th), kept on the device."""

from typing import List, Optional, Sequence

import torch
from torch import Tensor

__all__ = ["LossHistory"]

# Windows kept as separate chunks before they are joined into one tensor (a long run would
# otherwise hold one small tensor per window).
MAX_CHUNKS = 64


class LossHistory:
    """The loss :math:`L(X_t)` of step t, taken before that step's update, one column per matrix.

    With ``every=k`` only steps 0, k, 2k, ... are kept: the history of a long run on a large
    batch (``steps x batch`` values, on the device and in every checkpoint) shrinks k-fold.

    Example:
        >>> history = LossHistory(every=2)
        >>> history.append(torch.tensor([4.0, 3.0, 2.0]), first_step=0)
        >>> history.append(torch.tensor([1.0, 0.5]), first_step=3)
        >>> history.losses.tolist(), history.steps.tolist()
        ([4.0, 2.0, 0.5], [0, 2, 4])
    """

    def __init__(self, every: int = 1, batch_shape: Sequence[int] = ()) -> None:
        self.every = every
        self.batch_shape = tuple(batch_shape)
        self._chunks: List[Tensor] = []
        self.first: Optional[Tensor] = None  # shape: (...), L(X_0) per matrix

    def append(self, losses: Tensor, first_step: int) -> None:
        """Add a window's losses, shape ``(steps, ...)``, the first of them of ``first_step``."""
        if self.first is None and first_step == 0 and len(losses):
            self.first = losses[0]
        if self.every > 1:  # keep steps 0, k, 2k, ...; a copy, so the window's buffer is freed
            losses = losses[(-first_step) % self.every :: self.every].clone()
        self._chunks.append(losses)
        if len(self._chunks) > MAX_CHUNKS:
            self._chunks = [self.losses]

    @property
    def losses(self) -> Tensor:  # shape: (kept, ...)
        """The kept losses so far, on the device of the latest window."""
        if not self._chunks:
            return torch.empty((0, *self.batch_shape))
        device = self._chunks[-1].device
        return torch.cat([chunk.to(device) for chunk in self._chunks])

    @property
    def steps(self) -> Tensor:  # shape: (kept,)
        """The step of each row of :attr:`losses`."""
        return torch.arange(sum(len(chunk) for chunk in self._chunks)) * self.every

    def restore(self, losses: Tensor) -> None:  # shape: (kept, ...)
        """Start again from the kept losses of a checkpoint."""
        self._chunks = [losses] if len(losses) else []
        self.first = losses[0] if len(losses) else None
