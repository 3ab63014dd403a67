r"""Splitting one inversion across the processes of a distributed run (Lightning's DDP).

Two splits, both exact:

- ``"batch"``: a batch of independent matrices is cut into one contiguous slice per process;
  each process steps its own slice, and at the end of every ``training_step`` the processes gather
  X, the momentum buffer and the losses, so every process holds the whole state (checkpoints
  and reports need nothing else).
- ``"columns"``: the loss is a sum over the product's columns (``left``: :math:`X M_{:,j}`
  against :math:`e_j`; ``right``: rows, :math:`M_{i,:} X` against :math:`e_i^\top`), so each
  process takes a slice of them and the partial gradients are summed with one all-reduce per
  step: the same step as the full-batch run, to rounding.

With one process nothing is split (``"none"``); a formulation without a column split
(``symmetric``) is split by batch only.
"""

from dataclasses import dataclass
from typing import List, Literal, Optional, Tuple, get_args

import torch
import torch.distributed as dist
from torch import Tensor

from gdinv_modules.core.formulation import Formulation
from gdinv_modules.core.functional import loss_and_gradient, squared_norm

__all__ = ["Sharding", "ShardMode", "SHARD_MODES"]

ShardMode = Literal["batch", "columns", "none"]
SHARD_MODES: Tuple[str, ...] = get_args(ShardMode)


@dataclass
class Sharding:
    """One process's part of the work.

    Example:
        >>> from gdinv_modules.core.formulation import LEFT
        >>> Sharding.plan("batch", batch_count=3, k=4, formulation=LEFT, world_size=2,
        ...               global_rank=1)
        Sharding(mode='batch', world_size=2, global_rank=1, size=3, start=2, stop=3)
    """

    mode: str
    world_size: int  # processes
    global_rank: int  # this process
    size: int  # matrices (batch) or columns (columns) to split
    start: int  # this process's first
    stop: int

    @property
    def chunk(self) -> int:
        """The largest slice over the processes (slices are padded to it when gathered)."""
        return max(high - low for low, high in map(self.bounds, range(self.world_size)))

    def bounds(self, global_rank: int) -> Tuple[int, int]:
        """The slice ``[start, stop)`` of a process."""
        world = self.world_size
        edges = [round(self.size * index / world) for index in range(world + 1)]
        return edges[global_rank], edges[global_rank + 1]

    @classmethod
    def plan(
        cls,
        mode: str,
        *,
        batch_count: int,
        k: int,
        formulation: Formulation,
        world_size: int,
        global_rank: int,
    ) -> "Sharding":
        """Choose the split: ``"batch"`` splits the batch if every process gets a matrix,
        else the columns; single-process runs are not split, nor is a formulation without a
        column split where the columns would be."""
        if mode == "batch" and batch_count < world_size:
            mode = "columns"
        if (
            world_size == 1
            or mode == "none"
            or (mode == "columns" and not formulation.allows_column_split)
        ):
            return cls("none", world_size, global_rank, 0, 0, 0)
        plan = cls(mode, world_size, global_rank, batch_count if mode == "batch" else k, 0, 0)
        plan.start, plan.stop = plan.bounds(global_rank)
        return plan

    def loss_and_gradient(
        self,
        inverse: Tensor,
        matrix: Tensor,
        formulation: Formulation,
        ridge: float = 0.0,
        *,
        product: Optional[Tensor] = None,
    ) -> Tuple[Tensor, Tensor]:
        """This process's part of the per-matrix loss, and the gradient of the whole loss.
        ``product``: E at X where the caller has it (a single process's only; overwritten).

        ``"batch"``: the losses of this process's matrices, and a gradient that is zero outside
        them. ``"columns"``: the partial losses of this process's columns (summed over the
        processes at the end of the step's batch) and the full gradient (summed now).
        """
        if self.mode == "none":
            return loss_and_gradient(inverse, matrix, formulation, ridge, product=product)
        if self.mode == "batch":
            loss, local = loss_and_gradient(
                self._local(inverse), self._local(matrix), formulation, ridge
            )
            gradient = torch.zeros_like(inverse)
            self._local(gradient).copy_(local)
            return loss, gradient
        loss, gradient = self._column_part(inverse, matrix, formulation, ridge)
        dist.all_reduce(gradient)
        return loss, gradient

    def _column_part(
        self, inverse: Tensor, matrix: Tensor, formulation: Formulation, ridge: float
    ) -> Tuple[Tensor, Tensor]:
        columns = slice(self.start, self.stop)
        loss, gradient = loss_and_gradient(inverse, matrix, formulation, columns=columns)
        if ridge:  # counted once over the processes
            loss = loss + ridge * inverse.square().sum(dim=(-2, -1)) / self.world_size
            gradient += (2 * ridge / self.world_size) * inverse
        return loss, gradient

    def data_sample(
        self, inverse: Tensor, matrix: Tensor, formulation: Formulation, target: Optional[Tensor]
    ) -> Tuple[Tensor, Tensor]:
        """For the tuner, per matrix over all processes: the loss above its floor (no ridge) and the
        squared norm of its gradient."""
        if self.mode == "columns":
            loss, gradient = self._column_part(inverse, matrix, formulation, 0.0)
            if target is not None:
                loss = self._column_excess(inverse, matrix, formulation, target)
            loss, gradient = self.sum(loss), self.sum(gradient)
            return loss, squared_norm(gradient)
        batch = self.mode == "batch"
        local = self._local if batch else (lambda tensor: tensor)
        loss, gradient = loss_and_gradient(local(inverse), local(matrix), formulation)
        if target is not None:
            product = formulation.product(local(inverse), local(matrix))
            loss = (product - local(target)).abs().square().mean(dim=(-2, -1))
        norms = squared_norm(gradient)
        if batch:
            shape = inverse.shape[:-2]
            return self.gather(loss).reshape(shape), self.gather(norms).reshape(shape)
        return loss, norms

    def _column_excess(
        self, inverse: Tensor, matrix: Tensor, formulation: Formulation, target: Tensor
    ) -> Tensor:
        product = formulation.product(inverse, matrix)
        part = formulation.columns_of(product - target, slice(self.start, self.stop))
        k = product.shape[-1]
        return part.abs().square().sum(dim=(-2, -1)) / (k * k)

    def sum(self, tensor: Tensor) -> Tensor:
        """Sum over the processes (a no-op without a split)."""
        if self.mode != "none":
            dist.all_reduce(tensor)
        return tensor

    def gather(self, local: Tensor) -> Tensor:  # shape: (stop - start, ...) -> (count, ...)
        """Concatenate every process's slice along dimension 0 (a no-op without a split)."""
        if self.mode == "none":
            return local
        padded = local.new_zeros((self.chunk, *local.shape[1:]))
        padded[: len(local)] = local
        parts: List[Tensor] = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded)
        bounds = [self.bounds(index) for index in range(self.world_size)]
        return torch.cat(
            [part[: high - low] for part, (low, high) in zip(parts, bounds, strict=True)]
        )

    def gather_batch(self, tensor: Tensor) -> Tensor:  # shape: (..., a, b), whole batch
        """Replace every process's stale copy of the other slices by their owners' values."""
        if self.mode != "batch":
            return tensor
        return self.gather(self._local(tensor)).reshape(tensor.shape)

    def local_part(self, product: Tensor) -> Tensor:  # shape: (..., k, k)
        """This process's share of a product for a metric whose states are summed over the
        processes: its slice of the batch; under a column split every process holds the same
        whole product and passes it all, which leaves the mean unchanged."""
        return self._local(product) if self.mode == "batch" else product

    @classmethod
    def single(cls) -> "Sharding":
        """No split: one process does it all."""
        return cls("none", 1, 0, 0, 0, 0)

    def _local(self, tensor: Tensor) -> Tensor:  # shape: (..., a, b) -> (stop - start, a, b)
        """This process's matrices of a batch, flattened to one batch dimension (a view)."""
        return tensor.reshape(-1, *tensor.shape[-2:])[self.start : self.stop]
