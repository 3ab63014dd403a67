"""Side-by-side benchmark of gradient-descent inversion against the post, a bare loop,
Newton-Schulz and ``torch.linalg.inv``, all in one process.

    python benchmarks/bench_inverse.py [--quick] [--output results.json]

For each matrix and dtype it measures the time per optimizer step of the post's loop, a bare
PyTorch autograd + SGD loop and ``LitInverse`` under a default Trainer (progress bar and logger
on), all with the post's lr 0.9 and momentum 0.9; then steps and wall time to the dtype's
tolerance for ``invert`` (lr and momentum "auto"), Newton-Schulz and ``torch.linalg.inv``, beside
Polyak's optimal step count from the exact SVD. Ratios are to the bare loop (per step) and to
``torch.linalg.inv`` (time to the tolerance). It prints a table and writes JSON.
"""

import argparse
import json
import logging
import math
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional

import pytorch_lightning as pl
import torch

from gdinv_modules import DivergenceError, LitInverse, invert
from gdinv_modules.core.functional import default_tol, relative_residual
from gdinv_modules.core.matrices import (
    conditioned_matrix,
    diagonal_matrix,
    random_matrix,
    spd_matrix,
)
from gdinv_modules.core.theory import polyak_parameters

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from reference import heavy_ball_steps  # noqa: E402  (the tests' plain heavy-ball loop)

POST_LR, POST_MOMENTUM = 0.9, 0.9


def post_loop(matrix: torch.Tensor, steps: int) -> torch.Tensor:
    """The post's loop: autograd, then X -= lr * grad and grad *= momentum instead of zeroing."""
    torch.manual_seed(314)
    approx = torch.rand(matrix.shape, dtype=torch.float32).to(matrix.dtype).requires_grad_()
    identity = torch.eye(len(matrix), dtype=matrix.dtype)
    losses = []
    for _ in range(steps):
        loss = ((approx @ matrix - identity) ** 2).mean()
        losses.append(loss.detach())
        loss.backward()
        with torch.no_grad():
            approx -= POST_LR * approx.grad
        approx.grad *= POST_MOMENTUM
    return torch.stack(losses)


def bare_sgd_loop(matrix: torch.Tensor, steps: int) -> torch.Tensor:
    """The plain PyTorch way: autograd and torch.optim.SGD, zero_grad every step."""
    torch.manual_seed(314)
    approx = torch.rand(matrix.shape, dtype=torch.float32).to(matrix.dtype).requires_grad_()
    optimizer = torch.optim.SGD([approx], lr=POST_LR, momentum=POST_MOMENTUM)
    identity = torch.eye(len(matrix), dtype=matrix.dtype)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = ((approx @ matrix - identity) ** 2).mean()
        losses.append(loss.detach())
        loss.backward()
        optimizer.step()
    return torch.stack(losses)


def lit_default_trainer(matrix: torch.Tensor, steps: int) -> torch.Tensor:
    """LitInverse with the post's settings under a default Trainer (progress bar, logger on)."""
    model = LitInverse(matrix, lr=POST_LR, momentum=POST_MOMENTUM)
    with tempfile.TemporaryDirectory() as root:
        try:
            pl.Trainer(max_steps=steps, default_root_dir=root, accelerator="cpu").fit(model)
        except DivergenceError:  # the post's fixed pair is past the stable bound for this M
            pass
    return model.losses


def newton_schulz(matrix: torch.Tensor, tol: float, max_steps: int = 200) -> Optional[int]:
    """X <- X (2I - M X) from X0 = M^T / (||M||_1 ||M||_inf): two products a step."""
    identity = torch.eye(len(matrix), dtype=matrix.dtype)
    approx = matrix.T / (
        torch.linalg.matrix_norm(matrix, 1) * torch.linalg.matrix_norm(matrix, math.inf)
    )
    for step in range(max_steps + 1):
        if relative_residual(approx @ matrix).item() <= tol:
            return step
        approx = approx @ (2 * identity - matrix @ approx)
    return None


def first_below(losses: torch.Tensor, n: int, tol: float) -> Optional[int]:
    """The first step whose relative residual sqrt(n L) is at most tol."""
    below = ((losses.double() * n).sqrt() <= tol).nonzero()
    return int(below[0]) if len(below) else None


def timed(function: Callable, *args, repeats: int = 1):
    best, result = math.inf, None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function(*args)
        best = min(best, time.perf_counter() - start)
    return best, result


def bench_matrix(name: str, matrix: torch.Tensor, budget: int, auto_budget: int) -> Dict:
    n = matrix.shape[-1]
    tol = default_tol(matrix.dtype)
    row: Dict = {
        "matrix": name,
        "n": n,
        "dtype": str(matrix.dtype).replace("torch.", ""),
        "tol": tol,
        "condition": torch.linalg.cond(matrix.double()).item(),
    }
    inv_time, _ = timed(torch.linalg.inv, matrix, repeats=20)
    row["inv_s"] = inv_time
    for label, loop in (
        ("post", post_loop),
        ("bare_sgd", bare_sgd_loop),
        ("lit_post", lit_default_trainer),
    ):
        seconds, losses = timed(loop, matrix, budget)
        row[f"{label}_us_per_step"] = 1e6 * seconds / len(losses)
        row[f"{label}_steps_to_tol"] = first_below(losses, n, tol)
        row[f"{label}_diverged"] = not bool(torch.isfinite(losses).all()) or len(losses) < budget
        steps = row[f"{label}_steps_to_tol"]
        row[f"{label}_s_to_tol"] = None if steps is None else steps * seconds / len(losses)
    row["lit_post_over_bare_per_step"] = row["lit_post_us_per_step"] / row["bare_sgd_us_per_step"]
    seconds, result = timed(lambda: invert(matrix, tol=tol, max_steps=auto_budget, refine=False))
    row["auto_converged"] = bool(result.converged)
    row["auto_steps_to_tol"] = int(result.steps_to_tol) if row["auto_converged"] else None
    row["auto_s"] = seconds
    row["auto_us_per_step"] = 1e6 * seconds / len(result.losses)
    row["auto_over_inv_time"] = seconds / inv_time
    s = torch.linalg.svdvals(matrix.double())
    lr, momentum = polyak_parameters(s[0], s[-1], n)
    row["polyak_steps_to_tol"] = heavy_ball_steps(
        matrix.double(), lr.item(), momentum.item(), tol=tol, max_steps=auto_budget
    )
    if row["auto_steps_to_tol"] and row["polyak_steps_to_tol"]:
        row["auto_over_polyak_steps"] = row["auto_steps_to_tol"] / row["polyak_steps_to_tol"]
    seconds, steps = timed(newton_schulz, matrix, tol)
    row["newton_schulz_steps"], row["newton_schulz_s"] = steps, seconds
    row["newton_schulz_over_inv_time"] = seconds / inv_time
    return row


def bare_step_seconds(matrix: torch.Tensor, steps: int = 50) -> float:
    """One heavy-ball step at its leanest: two matrix products and the momentum update."""
    inverse, velocity = torch.zeros_like(matrix), torch.zeros_like(matrix)

    def run(count: int) -> None:
        for _ in range(count):
            error = inverse @ matrix
            error.diagonal().sub_(1)
            velocity.mul_(0.5).add_(error @ matrix.mH)
            inverse.sub_(1e-3 * velocity)
        synchronize(matrix)

    run(5)
    seconds = math.inf
    for _ in range(3):
        start = time.perf_counter()
        run(steps)
        seconds = min(seconds, (time.perf_counter() - start) / steps)
    return seconds


def synchronize(tensor: torch.Tensor) -> None:
    if tensor.is_cuda:
        torch.cuda.synchronize(tensor.device)


def residual64(inverse: torch.Tensor, matrix: torch.Tensor) -> float:
    """The relative residual ||XM - I||_F / sqrt(n), measured in float64."""
    return relative_residual(inverse.double() @ matrix.double()).item()


def precision_panel(n: int, kappas: List[float], device: str) -> List[Dict]:
    """For each condition number and dtype: descent's steps needed against steps run, the
    time of invert() over its ideal (its steps x a bare step), and the residual beside
    torch.linalg.inv's."""
    rows = []
    for dtype in (torch.float32, torch.float64):
        for kappa in kappas:
            matrix = conditioned_matrix(n, condition=kappa, dtype=dtype).to(device)
            row: Dict = {"n": n, "kappa": kappa, "dtype": str(dtype).replace("torch.", "")}
            descent = invert(matrix, refine=False)
            row["descent_stop"] = descent.report.descent_stop
            row["descent_steps_needed"] = (
                int(descent.steps_to_tol.max()) if bool(descent.converged) else None
            )
            row["descent_steps_run"] = descent.report.steps
            bare = bare_step_seconds(matrix)
            seconds, result = timed(invert, matrix, repeats=2)
            steps = result.report.steps + result.report.refine_steps
            row.update(
                steps=result.report.steps,
                refine_steps=result.report.refine_steps,
                converged=bool(result.converged),
                bare_step_us=1e6 * bare,
                invert_s=seconds,
                invert_over_ideal=seconds / (steps * bare),
                residual=residual64(result.inverse, matrix),
                inv_residual=residual64(torch.linalg.inv(matrix), matrix),
            )
            row["inv_s"], _ = timed(synchronized_inv, matrix, repeats=5)
            rows.append(row)
            print(
                f"n={n} {row['dtype']} kappa {kappa:g}: descent {row['descent_stop']} needed "
                f"{row['descent_steps_needed']} run {row['descent_steps_run']} | invert "
                f"{row['steps']}+{row['refine_steps']} steps {seconds:.3g} s = "
                f"{row['invert_over_ideal']:.2f} x ideal | residual {row['residual']:.2e} vs "
                f"inv {row['inv_residual']:.2e}",
                flush=True,
            )
    return rows


def synchronized_inv(matrix: torch.Tensor) -> torch.Tensor:
    inverse = torch.linalg.inv(matrix)
    synchronize(matrix)
    return inverse


def m1_float64_speedup() -> Dict:
    """Target: auto reaches a residual of 1e-6 on M1 (float64) >= 20x faster than the post."""
    m1 = random_matrix(4, dtype=torch.float64)
    invert(m1, tol=1e-6)  # warm-up: imports, first Trainer
    post_seconds, _ = timed(post_loop, m1, 10_000)
    auto_seconds, result = timed(lambda: invert(m1, tol=1e-6), repeats=3)
    return {
        "post_10000_steps_s": post_seconds,
        "auto_to_1e-6_s": auto_seconds,
        "auto_steps": int(result.steps_to_tol),
        "speedup": post_seconds / auto_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small matrices and budgets only")
    parser.add_argument("--output", default=None, help="write the JSON here as well")
    parser.add_argument(
        "--panel-only", action="store_true", help="only the condition-number panel of invert()"
    )
    parser.add_argument("--panel-n", type=int, default=256, help="the panel's matrix order")
    parser.add_argument("--device", default="cpu", help="where the panel runs")
    args = parser.parse_args()
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TQDM_DISABLE", "0")
    torch.set_num_threads(max(1, torch.get_num_threads()))

    kappas = [10.0, 100.0, 1e3] if args.quick else [10.0, 100.0, 1e3, 1e4]
    panel = precision_panel(args.panel_n, kappas, args.device)
    if args.panel_only:
        write({"machine": machine(), "panel": panel}, args.output)
        return
    matrices = {
        "M1": lambda dtype: random_matrix(4, dtype=dtype),
        "M2": lambda dtype: diagonal_matrix(n=4, dtype=dtype),
        "diag(1..64)": lambda dtype: diagonal_matrix(n=64, dtype=dtype),
        "spd64 kappa 100": lambda dtype: spd_matrix(64, condition=100.0, dtype=dtype),
        "random64": lambda dtype: random_matrix(64, dtype=dtype),
        "random256": lambda dtype: random_matrix(256, dtype=dtype),
    }
    if args.quick:
        matrices = {key: matrices[key] for key in ("M1", "M2", "spd64 kappa 100")}
    rows: List[Dict] = []
    for name, make in matrices.items():
        for dtype in (torch.float32, torch.float64):
            n = make(torch.float32).shape[-1]
            budget = 10_000 if n <= 64 else 1_000
            auto_budget = 30_000 if n <= 64 else 5_000
            if args.quick:
                budget, auto_budget = min(budget, 2_000), min(auto_budget, 5_000)
            rows.append(bench_matrix(name, make(dtype), budget, auto_budget))
            print_row(rows[-1])
    results = {
        "machine": machine(),
        "panel": panel,
        "rows": rows,
        "m1_float64_to_1e-6": m1_float64_speedup(),
    }
    print(json.dumps(results["m1_float64_to_1e-6"], indent=2))
    write(results, args.output)


def machine() -> Dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "lightning": pl.__version__,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def write(results: Dict, output: Optional[str]) -> None:
    text = json.dumps(results, indent=2)
    if output:
        with open(output, "w") as handle:
            handle.write(text + "\n")
    print(text)


def print_row(row: Dict) -> None:
    def fmt(value, spec=".3g"):
        return "-" if value is None else format(value, spec)

    print(
        f"{row['matrix']:>16} {row['dtype']:>7} | us/step post {fmt(row['post_us_per_step'])}"
        f" bare {fmt(row['bare_sgd_us_per_step'])} lit {fmt(row['lit_post_us_per_step'])}"
        f" (x{fmt(row['lit_post_over_bare_per_step'], '.2f')}) | steps to {row['tol']:.0e}:"
        f" post {fmt(row['post_steps_to_tol'], 'd')} auto {fmt(row['auto_steps_to_tol'], 'd')}"
        f" polyak {fmt(row['polyak_steps_to_tol'], 'd')} NS {fmt(row['newton_schulz_steps'], 'd')}"
        f" | time/inv: auto x{fmt(row['auto_over_inv_time'], '.3g')}"
        f" NS x{fmt(row['newton_schulz_over_inv_time'], '.3g')}",
        flush=True,
    )


if __name__ == "__main__":
    main()
