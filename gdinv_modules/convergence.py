"""``ConvergenceMonitor``: stop at the tolerance, refuse divergence, once per training step."""

import math
from typing import TYPE_CHECKING, Any, Optional, cast

import pytorch_lightning as pl
import torch
from pytorch_lightning.core.optimizer import LightningOptimizer
from torch import Tensor

from gdinv_modules.errors import DivergenceError
from gdinv_modules.theory import power_sigma_max, stable_lr_bound

if TYPE_CHECKING:  # LitInverse imports this module, so only for the annotations
    from gdinv_modules.lit_inverse import LitInverse

__all__ = ["ConvergenceMonitor", "default_tol", "GROWTH_LIMIT"]

GROWTH_LIMIT = 1e8


def default_tol(dtype: torch.dtype) -> float:
    """The tolerance on the relative residual that a dtype can reach: 1e-10 for float64,
    1e-5 for float32, 1e-2 for the half types.

    Example:
        >>> default_tol(torch.float64)
        1e-10
    """
    if dtype == torch.float64:
        return 1e-10
    if dtype == torch.float32:
        return 1e-5
    return 1e-2


class ConvergenceMonitor(pl.Callback):
    """Checks ``LitInverse``'s residual and loss after every ``training_step`` (one host sync
    per ``steps_per_batch`` optimizer steps, none per step).

    - Stops the Trainer once every matrix's relative residual is at most ``tol``.
    - Raises :class:`~gdinv_modules.errors.DivergenceError` when the loss is not finite or has
      grown ``GROWTH_LIMIT`` times past its first value, naming lr, momentum and the stable
      bound for this M.
    """

    def __init__(self, tol: Optional[float]) -> None:
        self.tol = tol

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        model = cast("LitInverse", pl_module)
        if model.last_loss is None or model.last_residual is None or model.first_loss is None:
            return
        worst_loss, worst_residual, first_loss = torch.stack(
            [model.last_loss.max(), model.last_residual.max(), model.first_loss.max()]
        ).tolist()
        if not math.isfinite(worst_loss) or worst_loss > GROWTH_LIMIT * max(first_loss, 1e-30):
            raise DivergenceError(divergence_message(model, worst_loss, first_loss))
        if self.tol is not None and worst_residual <= self.tol:
            trainer.should_stop = True


def divergence_message(pl_module: "LitInverse", loss: float, first_loss: float) -> str:
    module = pl_module.module
    group = cast(LightningOptimizer, pl_module.optimizers()).optimizer.param_groups[0]
    lr, momentum = group["lr"], group["momentum"]
    sigma_max: Tensor = power_sigma_max(pl_module.matrix, module.formulation)
    bound = stable_lr_bound(sigma_max.double().max(), torch.tensor(momentum), module.size)
    return (
        f"the run diverged at step {pl_module.trainer.global_step}: loss {loss:.3e} "
        f"(first {first_loss:.3e}) with lr={lr:g}, momentum={momentum:g}; heavy ball is stable "
        f"only for lr < (1 + momentum) n^2 / sigma_max^2 = {bound.item():.4g} for this M "
        f"(sigma_max = {sigma_max.max().item():.4g}, n = {module.size}); lower lr or use lr='auto'"
    )
