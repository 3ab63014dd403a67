"""The one place the package reaches into Lightning past its public API.

A window of steps replayed from a CUDA graph steps the torch optimizer inside the graph, so
Lightning's ``LightningOptimizer.step`` (which counts ``trainer.global_step``) does not run for
it. Lightning has no public call that counts a step without taking one; this wrapper calls the
two per-step hooks that ``LightningOptimizer.step`` calls around the step, and
``tests/test_compat.py`` fails the day a Lightning release changes them. ``setup.cfg`` pins
the Lightning range it was tested on.
"""

from pytorch_lightning.core.optimizer import LightningOptimizer

__all__ = ["count_optimizer_steps"]


def count_optimizer_steps(optimizer: LightningOptimizer, steps: int) -> None:
    """Count ``steps`` optimizer steps taken outside ``optimizer.step()`` in the Trainer's
    progress (``global_step``), as ``step()`` would, without stepping."""
    for _ in range(steps):
        optimizer._on_before_step()
        optimizer._on_after_step()
