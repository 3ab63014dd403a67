r"""``StepGraph``: a window of optimizer steps captured once in a CUDA graph, then replayed.

Launched one kernel at a time, a step on a small M costs what Python and the CUDA launcher
spend on its half-dozen kernels, not what the kernels take. A CUDA graph records the kernels of
a whole window of steps once and launches them with one call, so a step then costs about its
kernels.

A graph replays the same kernels on the same memory with the numbers it was recorded with:

- the tensors the steps read and write (X, its momentum buffer, M, the tuner's gradient scale,
  the loss buffer) must stay where they are, and Python-side state must not change inside the
  window (the momentum buffer exists already, no retune is due);
- the Python numbers (lr, momentum, the window's length) are baked in.

Both go into the graph's *key*: a window whose key differs from the recorded one is recorded
again (a retune of ``lr="auto"`` costs one capture, about one eagerly-run window). The first
window runs eagerly on the capture stream (:meth:`StepGraph.warm_up`), which initialises what
the steps need there (cuBLAS's workspace, the momentum buffer) before anything is recorded, as
CUDA graphs require.
"""

from typing import Callable, Hashable, Optional, Sequence, Tuple

import torch
from torch import Tensor

__all__ = ["StepGraph"]

Steps = Callable[[Tensor], None]  # runs a window of steps, writing each step's loss to its row


class StepGraph:
    """Runs windows of optimizer steps from a CUDA graph, recording it again when its key changes.

    Args:
        device: the CUDA device the steps run on.

    Example (on a CUDA device)::

        graph = StepGraph(inverse.device)
        # steps(out) takes len(out) optimizer steps, writing each loss to a row of out
        graph.warm_up(steps, losses)  # the first window
        graph.run(steps, (lr, momentum), [inverse, matrix, buffer], losses)  # the next ones
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stream = torch.cuda.Stream(device)
        self.pool = torch.cuda.graph_pool_handle()
        self.warm = False
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.key: Optional[Hashable] = None
        self.inputs: Tuple[Tensor, ...] = ()  # kept alive: the graph reads their memory
        self.losses: Optional[Tensor] = None  # the graph's output buffer
        self.captures = 0  # how many times a graph was recorded
        self.replays = 0  # how many windows ran from a graph

    @staticmethod
    def supports(device: torch.device) -> bool:
        """Whether steps on ``device`` can be recorded (CUDA devices)."""
        return device.type == "cuda"

    def warm_up(self, steps: Steps, losses: Tensor) -> None:
        """Run a window eagerly on the capture stream, which initialises what the steps need
        there before anything is recorded; needed once, before the first :meth:`run`."""
        current = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(current)
        with torch.cuda.stream(self.stream):
            steps(losses)
        current.wait_stream(self.stream)
        self.warm = True

    def run(
        self,
        steps: Steps,
        key: Hashable,
        inputs: Sequence[Tensor],
        losses: Tensor,  # shape: (steps, ...), fresh: receives this window's losses
    ) -> Tensor:  # shape: (steps, ...)
        """Run one window by replaying the graph recorded for ``key`` and ``inputs``, recording
        it first if the last one was recorded for another key, other tensors or another length."""
        if not self.warm:
            raise RuntimeError("StepGraph.run before warm_up: CUDA graphs need a warm-up run")
        full_key = (key, tuple(tensor.data_ptr() for tensor in inputs), tuple(losses.shape))
        if full_key != self.key or self.graph is None:
            self._capture(steps, full_key, tuple(inputs), losses)
        assert self.graph is not None and self.losses is not None
        self.graph.replay()
        self.replays += 1
        return losses.copy_(self.losses)

    def release(self) -> None:
        """Free the recorded graph and its memory pool's hold (the next window records anew)."""
        self.graph, self.key, self.inputs, self.losses = None, None, (), None

    def _capture(
        self, steps: Steps, key: Hashable, inputs: Tuple[Tensor, ...], losses: Tensor
    ) -> None:
        self.graph = None  # frees the old graph's kernels before recording the new one
        graph = torch.cuda.CUDAGraph()
        buffer = torch.empty_like(losses)
        with torch.cuda.graph(graph, pool=self.pool, stream=self.stream):
            steps(buffer)
        self.graph, self.key, self.inputs, self.losses = graph, key, inputs, buffer
        self.captures += 1
