"""Peak memory on any device: the most bytes of tensors alive at once during a call, in copies
of M, counted by a ``TorchDispatchMode`` (what ``torch.cuda.max_memory_allocated`` sees on a
GPU, without one), with the lines that held them at the peak.

    python benchmarks/bench_memory.py [--n 256] [--lines 6] [--formulation left]

For ``invert()``, an ``InverseTracker`` update and a ``LitInverse`` built and fitted for 300
steps on the CPU (the last two for ``left``, the tracker's formulation, and the first and last
for ``--formulation``), in float64 and float32; M and the tracker's
buffers were allocated before the call and are not counted (as in ``bench_gpu_calls.py``); the
target is at most 6.
"""

import argparse
import logging
import traceback
import warnings
import weakref
from collections import Counter
from typing import Callable, Dict, List, Sequence, Tuple

import pytorch_lightning as pl
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from gdinv_modules import InverseTracker, LitInverse, conditioned_matrix, invert


class LiveBytes(TorchDispatchMode):
    """Counts the storages that ops create (over ``min_bytes``) until they are freed; the
    storages of ``existing`` tensors were allocated before and are not counted."""

    def __init__(self, min_bytes: int, existing: Sequence[torch.Tensor] = ()) -> None:
        super().__init__()
        self.min_bytes, self.live, self.peak = min_bytes, 0, 0
        self.existing = {t.untyped_storage().data_ptr() for t in existing}
        self.owners: Dict[int, Tuple[int, str]] = {}
        self.at_peak: List[Tuple[int, str]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(tensor, torch.Tensor):
                self._count(tensor.untyped_storage(), func)
        return out

    def _count(self, storage, func) -> None:
        key, size = storage.data_ptr(), storage.nbytes()
        if key == 0 or key in self.owners or key in self.existing or size < self.min_bytes:
            return
        frames = [f for f in traceback.extract_stack() if "gdinv_modules" in f.filename]
        where = " <- ".join(f"{f.name}:{f.lineno}" for f in reversed(frames[-2:]))
        self.owners[key] = (size, f"{where} ({func})")
        self.live += size
        weakref.finalize(storage, self._free, key, size)
        if self.live > self.peak:
            self.peak, self.at_peak = self.live, list(self.owners.values())

    def _free(self, key: int, size: int) -> None:
        self.live -= size
        self.owners.pop(key, None)


def peak_copies(
    call: Callable[[], object], matrix: torch.Tensor, *existing: torch.Tensor
) -> Tuple[float, LiveBytes]:
    """The most copies of M that ``call`` held at once (``tests/test_memory.py`` checks them),
    and the counter, which knows who held them."""
    unit = matrix.numel() * matrix.element_size()
    mode = LiveBytes(min_bytes=unit // 4, existing=(matrix, *existing))
    with mode:
        call()
    return mode.peak / unit, mode


def measure(
    name: str, call: Callable[[], object], matrix: torch.Tensor, lines: int, *existing
) -> None:
    unit = matrix.numel() * matrix.element_size()
    peak, mode = peak_copies(call, matrix, *existing)
    print(f"{name}: peak {peak:.1f} copies of M")
    held: Counter = Counter()
    for size, where in mode.at_peak:
        held[where] += size / unit
    for where, copies in held.most_common(lines):
        print(f"    {copies:.1f}  {where}")


def fit(matrix: torch.Tensor, formulation: str = "left") -> None:
    trainer = pl.Trainer(
        max_steps=300,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(LitInverse(matrix, lr="auto", momentum="auto", formulation=formulation))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--lines", type=int, default=6, help="the largest holders shown")
    parser.add_argument("--formulation", default="left", choices=("left", "right", "symmetric"))
    args = parser.parse_args()
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # Lightning's, of torch's pytree
    n, form = args.n, args.formulation
    for dtype in (torch.float64, torch.float32):
        matrix = conditioned_matrix(n, condition=50.0, dtype=torch.float64).to(dtype)
        measure(
            f"invert() {form} {dtype}",
            lambda m=matrix: invert(m, formulation=form),
            matrix,
            args.lines,
        )
        tracker = InverseTracker(matrix)
        scale = torch.linalg.matrix_norm(matrix, 2) / (2 * n**0.5)
        drifted = matrix + 1e-3 * scale * torch.randn_like(matrix)
        measure(
            f"InverseTracker.update {dtype}",
            lambda t=tracker, m=drifted: t.update(m),
            drifted,
            args.lines,
            *tracker.buffers(),
        )
        measure(
            f"LitInverse {form}, 300 steps {dtype}",
            lambda m=matrix: fit(m, form),
            matrix,
            args.lines,
        )


if __name__ == "__main__":
    main()
