"""Whole calls on a GPU against ``torch.linalg.inv``: ``invert()``, a tracker's update, and the
peak memory of ``invert``, ``LitInverse`` and the tracker against the bytes of M.

    python benchmarks/bench_gpu_calls.py [--device cuda] [--quick] [--output calls.json]

Side by side in one process, for n = 1024 and a batch of 4096 x 64x64, in float32 and float64:

- ``invert``: the whole call (rank check, tuning, descent, refinement, checks), eager and with
  ``cuda_graph=True`` under the default ``check_rank="auto"``, and eager with
  ``check_rank=True`` and ``False``; the median of ``--repeats`` calls after a
  warm-up, each over ``linalg.inv``'s median on the same M (A and B alternate);
- ``tracker``: ``InverseTracker.update`` along a drifting stream
  ``M_{t+1} = M_t + eps ||M_0||_2 N_t / (2 sqrt(n))`` (N_t Gaussian, so ``||N_t||_2`` is near
  ``2 sqrt(n)``), per update, over ``linalg.inv`` of the same matrices;
- ``svd``: for the batch, the rank check's SVD as torch runs it on the GPU against
  ``wide_svd`` (which takes such a batch to the CPU);
- ``memory``: ``torch.cuda.max_memory_allocated`` during each call, less what was allocated
  before it (M included), in copies of M; the target is at most 6. ``LitInverse``'s is the
  whole of building and fitting it; the tracker's is an update's, beside its two buffers.

With ``--device cpu --quick`` it runs anywhere (a smoke test of the script; CPU figures are not
the point, and memory is CUDA only).
"""

import argparse
import json
import logging
import statistics
import time
import warnings
from typing import Callable, Dict, List, Tuple

import pytorch_lightning as pl
import torch

from gdinv_modules import InverseTracker, LitInverse, conditioned_matrix, invert
from gdinv_modules.core.decomposition import wide_svd


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function: Callable[[], object], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    function()
    synchronize(device)
    return time.perf_counter() - start


def alternated(a: Callable[[], object], b: Callable[[], object], device, repeats: int):
    """Medians of A and B and of A/B, each timed ``repeats`` times, alternating, after one
    warm-up of each."""
    a(), b()
    times_a, times_b = [], []
    for _ in range(repeats):
        times_a.append(timed(a, device))
        times_b.append(timed(b, device))
    ratios = sorted(x / y for x, y in zip(times_a, times_b, strict=True))
    return statistics.median(times_a), statistics.median(times_b), ratios


def peak_copies(function: Callable[[], object], matrix: torch.Tensor) -> float:
    """The extra memory a call allocates at its peak, in copies of ``matrix``."""
    device = matrix.device
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    function()
    synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / (
        matrix.numel() * matrix.element_size()
    )


def cases(quick: bool) -> List[Tuple[str, int, Tuple[int, ...]]]:
    if quick:
        return [("n=64", 64, ()), ("16 x 16x16", 16, (16,))]
    return [("n=1024", 1024, ()), ("4096 x 64x64", 64, (4096,))]


def bench_invert(name, matrix, repeats: int) -> Dict:
    device = matrix.device
    inv = lambda: torch.linalg.inv(matrix)  # noqa: E731
    row: Dict = {"case": name, "dtype": str(matrix.dtype).replace("torch.", ""), "part": "invert"}
    variants = {  # "eager": invert()'s default, check_rank="auto"
        "eager": {},
        "rank_check_at_start": {"check_rank": True},
        "no_rank_check": {"check_rank": False},
    }
    if device.type == "cuda":
        variants["cuda_graph"] = {"cuda_graph": True}
    for label, options in variants.items():
        call = lambda options=options: invert(matrix, **options)  # noqa: E731
        ours, theirs, ratios = alternated(call, inv, device, repeats)
        result = invert(matrix, **options)
        row[label] = {
            "ms": 1e3 * ours,
            "inv_ms": 1e3 * theirs,
            "over_inv": ratios[len(ratios) // 2],
            "spread": [ratios[0], ratios[-1]],
            "steps": result.report.steps,
            "refine_steps": result.report.refine_steps,
            "residual": result.residual.max().item(),
        }
        if device.type == "cuda":
            row[label]["peak_copies_of_m"] = peak_copies(call, matrix)
    print(json.dumps(row), flush=True)
    return row


def bench_tracker(name, matrix, updates: int, eps: float) -> Dict:
    device, n = matrix.device, matrix.shape[-1]
    generator = torch.Generator(device=device).manual_seed(1)
    scale = eps * torch.linalg.matrix_norm(matrix, 2)[..., None, None] / (2 * n**0.5)
    stream, current = [], matrix
    for _ in range(updates):
        noise = torch.randn(matrix.shape, generator=generator, device=device, dtype=matrix.dtype)
        current = current + scale * noise
        stream.append(current)
    tracker = InverseTracker(matrix)
    steps: List[int] = []

    def track() -> None:
        for step in stream:
            steps.append(tracker.update(step).refine_steps)

    def inverses() -> None:
        for step in stream:
            torch.linalg.inv(step)

    inverses()  # warm-up; the tracker was warmed by its first inverse
    ours = timed(track, device)
    theirs = timed(inverses, device)
    row = {
        "case": name,
        "dtype": str(matrix.dtype).replace("torch.", ""),
        "part": "tracker",
        "eps": eps,
        "updates": updates,
        "update_ms": 1e3 * ours / updates,
        "inv_ms": 1e3 * theirs / updates,
        "over_inv": ours / theirs,
        "max_refine_steps": max(steps),
        "last_residual": tracker.last.residual.max().item(),
    }
    if device.type == "cuda":  # its buffers (M and X), and what an update adds at its peak
        row["held_copies_of_m"] = 2.0
        row["peak_copies_of_m"] = peak_copies(lambda: tracker.update(stream[0]), matrix)
    print(json.dumps(row), flush=True)
    return row


def bench_svd(name, matrix) -> Dict:
    """The rank check's SVD of a batch: torch's on the GPU (a loop over the matrices past
    32 x 32, timed on the first 256 and scaled) against ``wide_svd`` (the whole batch)."""
    device = matrix.device
    part = matrix[:256].double()
    torch.linalg.svd(part[:2], full_matrices=False)  # warm-up
    on_gpu = timed(lambda: torch.linalg.svd(part, full_matrices=False), device)
    wide_svd(matrix)
    ours = timed(lambda: wide_svd(matrix), device)
    row = {
        "case": name,
        "dtype": str(matrix.dtype).replace("torch.", ""),
        "part": "svd",
        "gpu_svd_ms_scaled": 1e3 * on_gpu * matrix.shape[0] / part.shape[0],
        "wide_svd_ms": 1e3 * ours,
    }
    print(json.dumps(row), flush=True)
    return row


def lit_peak(name, matrix) -> Dict:
    """Peak memory of building a LitInverse and fitting it for 300 steps on the GPU, in
    copies of M, and the steps it took (a check that it ran)."""
    models: List[LitInverse] = []

    def fit() -> None:
        model = LitInverse(matrix, lr="auto", momentum="auto")
        trainer = pl.Trainer(
            max_steps=300,
            accelerator="gpu",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(model)
        models.append(model)

    row = {
        "case": name,
        "dtype": str(matrix.dtype).replace("torch.", ""),
        "part": "LitInverse",
        "peak_copies_of_m": peak_copies(fit, matrix),
        "steps": models[0].report().steps,
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="small sizes and few repeats")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--updates", type=int, default=20)
    parser.add_argument("--eps", type=float, default=1e-3)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    device = torch.device(args.device)
    repeats = 2 if args.quick else args.repeats
    updates = 3 if args.quick else args.updates
    rows: List[Dict] = []
    results = {"device": str(device), "torch": torch.__version__, "rows": rows}
    if device.type == "cuda":
        results["device"] = torch.cuda.get_device_name(device)
    for dtype in (torch.float32, torch.float64):
        for name, n, batch in cases(args.quick):
            matrix = conditioned_matrix(
                n, condition=50.0, batch_shape=batch, dtype=torch.float64
            ).to(device=device, dtype=dtype)
            if batch and device.type == "cuda":
                rows.append(bench_svd(name, matrix))
            rows.append(bench_invert(name, matrix, repeats))
            rows.append(bench_tracker(name, matrix, updates, args.eps))
            if device.type == "cuda":
                rows.append(lit_peak(name, matrix))
            if args.output:  # after every case: a run cut short still leaves its figures
                with open(args.output, "w") as handle:
                    json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
