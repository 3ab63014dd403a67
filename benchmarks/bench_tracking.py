"""Tracking the inverse of a drifting matrix: steps and time per update, warm, against a cold
``invert()`` and ``torch.linalg.inv`` per update, and the residual over a stream of updates.

    python benchmarks/bench_tracking.py [--updates 1000] [--device cuda] [--dtype float32]
        [--eps 1e-4 1e-3] [--output results.json]

The stream is M_{t+1} = M_t + eps ||M_t||_2 N_t / ||N_t||_2 (N_t Gaussian), from a matrix with
condition number 50, for eps in {1e-4, 1e-3, 1e-2}, n in {16, 64, 256} and a batch of 64
matrices of 64 x 64, in float32 and float64 (tol 1e-5 and 1e-10). Targets: at most 4 steps
per update at eps = 1e-3; on a GPU, an update faster than torch.linalg.inv for the batch.
At eps = 1e-2 a tenth as many updates run: most leave refinement's reach and solve warm.
"""

import argparse
import json
import time
import warnings
from typing import Dict, List, Tuple

import torch

from gdinv_modules import InverseTracker, conditioned_matrix, invert

CASES: List[Tuple[str, int, Tuple[int, ...]]] = [
    ("n=16", 16, ()),
    ("n=64", 64, ()),
    ("n=256", 256, ()),
    ("64 x 64x64", 64, (64,)),
]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def stream(matrix: torch.Tensor, eps: float, count: int, seed: int) -> List[torch.Tensor]:
    """``count`` matrices, each a relative step of ``eps`` in the spectral norm from the last."""
    generator = torch.Generator().manual_seed(seed)
    matrices = []
    for _ in range(count):
        noise = torch.randn(matrix.shape, generator=generator, dtype=torch.float64)
        scale = torch.linalg.matrix_norm(matrix, 2) / torch.linalg.matrix_norm(noise, 2)
        matrix = matrix + eps * scale[..., None, None] * noise
        matrices.append(matrix)
    return matrices


def bench(name: str, n: int, batch: Tuple[int, ...], dtype, eps: float, updates: int, device):
    start = conditioned_matrix(n, condition=50.0, batch_shape=batch, dtype=torch.float64)
    matrices = [m.to(device=device, dtype=dtype) for m in stream(start, eps, updates, seed=1)]
    tracker = InverseTracker(start.to(device=device, dtype=dtype))
    steps, jumps, residuals = [], 0, []
    synchronize(device)
    began = time.perf_counter()
    for matrix in matrices:
        update = tracker.update(matrix)
        steps.append(update.refine_steps)
        jumps += update.jumped
        residuals.append(update.residual.max().item())
    synchronize(device)
    per_update = (time.perf_counter() - began) / updates
    sample = matrices[: min(20, updates)]
    synchronize(device)
    began = time.perf_counter()
    for matrix in sample:
        torch.linalg.inv(matrix)
    synchronize(device)
    inv_per_update = (time.perf_counter() - began) / len(sample)
    cold = matrices[: min(3, updates)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        began = time.perf_counter()
        for matrix in cold:
            invert(matrix)
        synchronize(device)
    cold_per_update = (time.perf_counter() - began) / len(cold)
    tenth = max(1, updates // 10)
    row = {
        "case": name,
        "dtype": str(dtype).replace("torch.", ""),
        "eps": eps,
        "updates": updates,
        "max_steps": max(steps),
        "mean_steps": sum(steps) / len(steps),
        "jumps": jumps,
        "update_us": 1e6 * per_update,
        "cold_invert_us": 1e6 * cold_per_update,
        "linalg_inv_us": 1e6 * inv_per_update,
        "first_tenth_worst_residual": max(residuals[:tenth]),
        "last_tenth_worst_residual": max(residuals[-tenth:]),
        "tol": tracker.tol,
    }
    print(
        f"{name:>12} {row['dtype']:>7} eps {eps:g}: steps max {row['max_steps']} mean "
        f"{row['mean_steps']:.2f} jumps {jumps} | update {row['update_us']:.0f} us, cold "
        f"invert {row['cold_invert_us']:.0f} us, linalg.inv {row['linalg_inv_us']:.0f} us | "
        f"residual first {row['first_tenth_worst_residual']:.1e} last "
        f"{row['last_tenth_worst_residual']:.1e}",
        flush=True,
    )
    return row


def bench_jump(repeats: int) -> Dict:
    """One matrix of a batch of 16 x 64x64 (float64, kappa 50) jumps to a new matrix while the
    others drift by 1e-4: the update, against a cold invert() of that matrix plus a drift-only
    update of the batch. A and B alternate; the ratio's median and spread over the repeats."""
    start = conditioned_matrix(64, condition=50.0, batch_shape=(16,), dtype=torch.float64)
    (drifted,) = stream(start, 1e-4, 1, seed=2)
    jumped = drifted.clone()
    jumped[5] = conditioned_matrix(64, condition=50.0, seed=99, dtype=torch.float64)
    base = InverseTracker(start)

    def fresh() -> InverseTracker:
        return InverseTracker(start, inverse=base.inverse)

    ratios, ours, theirs = [], [], []
    for _ in range(repeats):
        tracker = fresh()
        began = time.perf_counter()
        update = tracker.update(jumped)
        ours.append(time.perf_counter() - began)
        tracker = fresh()
        began = time.perf_counter()
        invert(jumped[5])
        tracker.update(drifted)
        theirs.append(time.perf_counter() - began)
        ratios.append(ours[-1] / theirs[-1])
    ratios.sort()
    row = {
        "update_ms": 1e3 * sorted(ours)[len(ours) // 2],
        "cold_plus_drift_ms": 1e3 * sorted(theirs)[len(theirs) // 2],
        "ratio_median": ratios[len(ratios) // 2],
        "ratio_spread": (ratios[0], ratios[-1]),
        "worst_residual": update.residual.max().item(),
        "jumped": update.jumped,
    }
    print(
        f"jump in 1 of 16 x 64x64: update {row['update_ms']:.1f} ms, cold invert + drift "
        f"update {row['cold_plus_drift_ms']:.1f} ms, ratio {row['ratio_median']:.2f} "
        f"({ratios[0]:.2f} to {ratios[-1]:.2f}), worst residual {row['worst_residual']:.1e}",
        flush=True,
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=1000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", default=None)
    parser.add_argument("--dtype", choices=["float64", "float32"], nargs="+")
    parser.add_argument("--eps", type=float, nargs="+", default=[1e-4, 1e-3, 1e-2])
    parser.add_argument("--jump", type=int, default=0, help="repeats of the one-jump case only")
    args = parser.parse_args()
    if args.jump:
        bench_jump(args.jump)
        return
    dtypes = [getattr(torch, name) for name in (args.dtype or ["float64", "float32"])]
    device = torch.device(args.device)
    rows: List[Dict] = []
    for dtype in dtypes:
        for name, n, batch in CASES:
            for eps in args.eps:
                # eps = 1e-2 leaves refinement's reach (kappa eps = 0.5): a tenth as many
                # updates, each a warm heavy-ball solve
                count = args.updates if eps < 1e-2 else max(1, args.updates // 10)
                rows.append(bench(name, n, batch, dtype, eps, count, device))
    results = {"torch": torch.__version__, "device": str(device), "rows": rows}
    if args.output:
        with open(args.output, "w") as handle:
            handle.write(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
