"""The one place the package reaches into Lightning past its public API.

A window of steps replayed from a CUDA graph steps the torch optimizer inside the graph, so
Lightning's ``LightningOptimizer.step`` (which counts ``trainer.global_step``) does not run for
it. Lightning has no public call that counts a step without taking one; this wrapper calls the
two per-step hooks that ``LightningOptimizer.step`` calls around the step.

A ``ModelCheckpoint(every_n_train_steps=k)`` looks at ``global_step`` only when a batch (here
a window) ends; windows that end at each multiple of k let it save there. Its k is public only
inside its ``state_key``, which this reads.

Under ``strategy="ddp_spawn"`` (or ``ddp_fork``, ``ddp_notebook``) the run happens in processes
that multiprocessing starts, and only the module's weights and ``callback_metrics`` come back:
a callback's state ends with them. Lightning says which launcher runs only by its class.

``tests/test_compat.py`` fails the day a Lightning release changes any of these. ``setup.cfg`` pins
the Lightning range it was tested on.
"""

import ast
from typing import Any, List

from pytorch_lightning.core.optimizer import LightningOptimizer

__all__ = ["checkpoint_step_intervals", "count_optimizer_steps", "runs_in_started_processes"]


def count_optimizer_steps(optimizer: LightningOptimizer, steps: int) -> None:
    """Count ``steps`` optimizer steps taken outside ``optimizer.step()`` in the Trainer's
    progress (``global_step``), as ``step()`` would, without stepping."""
    for _ in range(steps):
        optimizer._on_before_step()
        optimizer._on_after_step()


def checkpoint_step_intervals(trainer: Any) -> List[int]:
    """The ``every_n_train_steps`` of the Trainer's checkpoint callbacks that save by steps
    (a ``pytorch_lightning`` or ``lightning`` Trainer)."""
    intervals = []
    for callback in trainer.checkpoint_callbacks:
        # e.g. "ModelCheckpoint{'monitor': None, ..., 'every_n_train_steps': 150, ...}"
        key = callback.state_key
        if "{" not in key:
            continue
        try:
            settings = ast.literal_eval(key[key.index("{") :])
        except (ValueError, SyntaxError):
            continue
        every = settings.get("every_n_train_steps") if isinstance(settings, dict) else None
        if isinstance(every, int) and every > 0:
            intervals.append(every)
    return intervals


def runs_in_started_processes(trainer: Any) -> bool:
    """Whether the Trainer runs in processes that multiprocessing starts (``ddp_spawn``,
    ``ddp_fork``, ``ddp_notebook``), whose callbacks' state does not come back to yours."""
    launcher = trainer.strategy.launcher
    return launcher is not None and type(launcher).__name__ == "_MultiProcessingLauncher"
