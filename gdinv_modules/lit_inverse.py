"""``LitInverse``: trains an :class:`InverseModule` under a Lightning ``Trainer``."""

from typing import Any, Dict, Iterable, List, Optional

import pytorch_lightning as pl
import torch
from torch import Tensor

from gdinv_modules.datamodule import step_ticks
from gdinv_modules.errors import InvalidOptionError
from gdinv_modules.functional import Formulation, loss_and_gradient, relative_residual
from gdinv_modules.inverse_module import Init, InverseModule
from gdinv_modules.metric import IdentityMSE
from gdinv_modules.validation import check_momentum, check_positive_float, check_positive_int

__all__ = ["LitInverse"]


class LitInverse(pl.LightningModule):
    r"""Gradient descent on :math:`\lVert E - I \rVert_F^2 / n^2` with ``torch.optim.SGD``.

    Heavy ball, exactly as ``torch.optim.SGD(lr, momentum)`` (dampening 0, no Nesterov):

    .. math::
        v_t = \beta v_{t-1} + \nabla L(X_t), \qquad X_{t+1} = X_t - \eta\, v_t,

    with the closed-form gradient of :func:`~gdinv_modules.functional.loss_and_gradient`.
    Each ``training_step`` takes ``steps_per_batch`` optimizer steps (manual optimization, no
    host sync), so a Trainer run costs about what a bare loop costs; ``trainer.global_step`` and
    ``max_steps`` count optimizer steps. The loss of every step, :math:`L(X_t)` before step
    :math:`t`'s update, is kept on the device (:attr:`losses`) and saved in checkpoints.

    After each ``training_step`` it logs ``loss`` (the :class:`IdentityMSE` of the current X over
    the batch) and ``residual`` (the largest relative residual in the batch).

    Args:
        matrix: M, shape ``(..., n, n)``. Leave it out to take M from the ``datamodule``'s
            ``matrix`` (:class:`MatrixDataModule`) or from a checkpoint.
        lr: the learning rate :math:`\eta > 0`.
        momentum: the heavy-ball momentum :math:`0 \le \beta < 1`.
        formulation: ``"left"`` (:math:`XM`), ``"right"`` (:math:`MX`) or ``"symmetric"``.
        init: ``"random"`` (the post's first guess) or ``"zeros"``.
        seed: the seed of the random first guess.
        steps_per_batch: optimizer steps per ``training_step``.

    Example:
        >>> m = torch.tensor([[2.0, 1.0], [0.0, 1.0]])
        >>> model = LitInverse(m)
        >>> trainer = pl.Trainer(max_steps=300, logger=False, enable_progress_bar=False,
        ...                      enable_checkpointing=False, enable_model_summary=False)
        >>> trainer.fit(model)
        >>> torch.allclose(model.inverse, torch.linalg.inv(m), atol=1e-5)
        True
    """

    def __init__(
        self,
        matrix: Optional[Tensor] = None,
        *,
        lr: float = 0.9,
        momentum: float = 0.9,
        formulation: Formulation = "left",
        init: Init = "random",
        seed: int = 314,
        steps_per_batch: int = 100,
    ) -> None:
        super().__init__()
        check_positive_float(lr, name="lr")
        check_momentum(momentum)
        check_positive_int(steps_per_batch, name="steps_per_batch")
        self.save_hyperparameters(ignore=["matrix"])
        self.automatic_optimization = False
        self.inverse_module: Optional[InverseModule] = None
        self.metric = IdentityMSE()
        self._loss_chunks: List[Tensor] = []
        if matrix is not None:
            self._build(matrix)

    def _build(self, matrix: Tensor) -> None:
        self.inverse_module = InverseModule(
            matrix,
            formulation=self.hparams.formulation,
            init=self.hparams.init,
            seed=self.hparams.seed,
        )

    def _module(self) -> InverseModule:
        if self.inverse_module is None:
            raise InvalidOptionError(
                "LitInverse has no matrix: pass one, fit with a MatrixDataModule, "
                "or load a checkpoint"
            )
        return self.inverse_module

    @property
    def inverse(self) -> Tensor:  # shape: (..., n, n)
        """The current approximate inverse, detached."""
        return self._module().inverse

    @property
    def losses(self) -> Tensor:  # shape: (steps, ...)
        """The loss of every optimizer step so far, one column per matrix of the batch."""
        if not self._loss_chunks:
            return torch.empty((0, *self._module().batch_shape), dtype=self.inverse.dtype)
        if len(self._loss_chunks) > 1:
            device = self._loss_chunks[-1].device
            self._loss_chunks = [torch.cat([c.to(device) for c in self._loss_chunks])]
        return self._loss_chunks[0]

    def forward(self, matrix: Optional[Tensor] = None) -> Tensor:  # shape: (..., n, n)
        """The estimate of the identity (see :meth:`InverseModule.forward`)."""
        return self._module()(matrix)

    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        matrix = getattr(datamodule, "matrix", None)
        if matrix is None:
            self._module()
        elif self.inverse_module is None:
            self._build(matrix)
        elif not (
            matrix.shape == self.inverse_module.matrix.shape
            and torch.equal(matrix.to(self.inverse_module.matrix), self.inverse_module.matrix)
        ):
            raise InvalidOptionError(
                "LitInverse holds a matrix already and the datamodule serves another: give one"
            )

    def train_dataloader(self) -> Iterable[int]:
        return step_ticks()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(
            self._module().parameters(), lr=self.hparams.lr, momentum=self.hparams.momentum
        )

    def training_step(self, batch: Any, batch_idx: int) -> None:
        module = self._module()
        steps = self.hparams.steps_per_batch
        if self.trainer.max_steps >= 0:
            steps = min(steps, self.trainer.max_steps - self.trainer.global_step)
        optimizer = self.optimizers()
        approx, matrix = module.approx, module.matrix
        losses = approx.new_empty((steps, *module.batch_shape))
        with torch.no_grad():
            for step in range(steps):
                losses[step], approx.grad = loss_and_gradient(approx, matrix, module.formulation)
                optimizer.step()
            estimate = module(matrix)
            self.metric(estimate)
            residual = relative_residual(estimate).max()
        self._loss_chunks.append(losses)
        self.log("loss", self.metric, on_step=True, on_epoch=False, prog_bar=True)
        self.log("residual", residual, on_step=True, on_epoch=False, prog_bar=True)

    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        checkpoint["loss_history"] = self.losses.detach().cpu()

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        if self.inverse_module is None:
            self._build(checkpoint["state_dict"]["inverse_module.matrix"])
        self._loss_chunks = [checkpoint.get("loss_history", torch.empty(0))]
