"""CUDA-graph semantics on the CPU, so that the recording and replaying logic runs in every test
session, not only on a GPU.

What matters about a CUDA graph for correctness, emulated here:

- capturing runs the Python code once and records the kernels it launches, but computes
  nothing: every tensor that existed before the capture holds what it held before;
- replaying runs the recorded kernels again on the same memory with the same scalar arguments,
  and no Python: state that Python changed during the capture (an optimizer's first-step branch,
  a learning rate read from a dict) stays as the capture saw it.

Here a kernel is an aten operator seen by a ``TorchDispatchMode``: capture runs and records each
operator, and snapshots every pre-existing tensor an operator writes, to restore it when the
capture ends; replay calls each recorded operator again and writes a functional operator's
result into the tensor that the capture gave out, as a kernel writes into its recorded buffer.
"""

from contextlib import contextmanager, nullcontext
from typing import Any, Dict, Iterator, List, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class _Recorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: List[Tuple[Any, tuple, dict, Any]] = []
        self.created: set = set()  # storages made during the capture
        self.saved: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._local_scalar_dense.default:
            raise RuntimeError("a host sync (.item(), .tolist(), ...) inside a CUDA graph capture")
        for argument, value in _schema_values(func, args, kwargs):
            if argument.alias_info is not None and argument.alias_info.is_write:
                for tensor in _tensors(value):
                    self._save(tensor)
        out = func(*args, **kwargs)
        for tensor in _tensors(out):
            if not func.is_view and not func._schema.is_mutable:
                self.created.add(_storage(tensor))
        self.ops.append((func, args, kwargs, out))
        return out

    def _save(self, tensor: torch.Tensor) -> None:
        if _storage(tensor) not in self.created and id(tensor) not in self.saved:
            self.saved[id(tensor)] = (tensor, tensor.detach().clone())


def _schema_values(func, args, kwargs):
    for index, argument in enumerate(func._schema.arguments):
        if index < len(args):
            yield argument, args[index]
        elif argument.name in kwargs:
            yield argument, kwargs[argument.name]


def _tensors(value) -> List[torch.Tensor]:
    return [leaf for leaf in tree_flatten(value)[0] if isinstance(leaf, torch.Tensor)]


def _storage(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().data_ptr()


class EmulatedGraph:
    """Stands for ``torch.cuda.CUDAGraph``."""

    def __init__(self) -> None:
        self.ops: List[Tuple[Any, tuple, dict, Any]] = []
        self.replays = 0

    @contextmanager
    def capture(self) -> Iterator[None]:
        recorder = _Recorder()
        with torch.no_grad(), recorder:
            yield
        for tensor, before in recorder.saved.values():
            tensor.copy_(before)  # a capture computes nothing
        self.ops = recorder.ops

    def replay(self) -> None:
        self.replays += 1
        for func, args, kwargs, out in self.ops:
            if func.is_view:
                continue  # the recorded view already aliases the recorded memory
            result = func(*args, **kwargs)
            if not func._schema.is_mutable:
                for recorded, new in zip(_tensors(out), _tensors(result), strict=True):
                    recorded.copy_(new)


class _Stream:
    def wait_stream(self, other: "_Stream") -> None:
        pass


def emulate_cuda_graphs(monkeypatch) -> None:
    """Make ``torch.cuda``'s graph and stream API, as ``StepGraph`` uses it, run on the CPU,
    and let ``LitInverse(cuda_graph=True)`` use it there (``monkeypatch``: pytest's, or any
    object with a ``setattr(target, name, value)``)."""
    from gdinv_modules.engine.step_graph import StepGraph

    monkeypatch.setattr(StepGraph, "supports", staticmethod(lambda device: True))
    cuda = torch.cuda
    monkeypatch.setattr(cuda, "Stream", lambda device=None: _Stream())
    monkeypatch.setattr(cuda, "current_stream", lambda device=None: _Stream())
    monkeypatch.setattr(cuda, "stream", lambda stream: nullcontext())
    monkeypatch.setattr(cuda, "graph_pool_handle", lambda: None)
    monkeypatch.setattr(cuda, "CUDAGraph", EmulatedGraph)
    monkeypatch.setattr(cuda, "graph", lambda graph, pool=None, stream=None: graph.capture())
