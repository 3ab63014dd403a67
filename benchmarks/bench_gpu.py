"""GPU benchmark: the cost of one gradient-descent step against the matrix products it needs.

    python benchmarks/bench_gpu.py [--device cuda] [--quick] [--output bench_gpu.json]
                                   [--markdown bench_gpu.md]
    python benchmarks/bench_gpu.py --render bench_gpu.json

For each size and dtype, side by side in one process:

- ``floor``: two matrix products of that size (``X @ M``, then ``R @ M^T``), the least a step
  can cost;
- ``graph``: the same closed-form heavy-ball step captured in a CUDA graph and replayed (the
  least Python can add; CUDA only);
- ``lit``: ``LitInverse`` under a Trainer, per optimizer step, from the difference of two runs
  of different lengths (so the Trainer's start cancels); ``lit_graph`` the same with
  ``cuda_graph=True`` (CUDA only);
- ``inv``: ``torch.linalg.inv`` on the same data;
- for a well-conditioned n = 1024 matrix, ``invert(..., tol=1e-5)`` against ``inv``, timed
  whole (eager and with ``cuda_graph=True``), and its steps alone at the per-step cost above.

Ratios are printed and written as JSON; ``--markdown`` writes the README's table and the
issue's targets, each marked met or not. With ``--device cpu --quick`` it runs anywhere (a smoke
test of the script itself; CPU figures are not the point).
"""

import argparse
import json
import logging
import time
import warnings
from typing import Callable, Dict, List, Tuple

import pytorch_lightning as pl
import torch

from gdinv_modules import LitInverse, invert
from gdinv_modules.core.functional import loss_and_gradient
from gdinv_modules.core.matrices import spd_matrix
from gdinv_modules.core.theory import polyak_parameters


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_per_call(function: Callable[[], object], device: torch.device, calls: int) -> float:
    """Seconds per call, after warm-up, with the device drained before and after."""
    for _ in range(3):
        function()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        function()
    synchronize(device)
    return (time.perf_counter() - start) / calls


def graph_step_seconds(matrix: torch.Tensor, lr: float, momentum: float, calls: int) -> float:
    """The closed-form heavy-ball step, captured once in a CUDA graph, then replayed."""
    approx = torch.zeros_like(matrix.mT)
    velocity = torch.zeros_like(approx)

    def step() -> None:
        _, gradient = loss_and_gradient(approx, matrix, "left")
        velocity.mul_(momentum).add_(gradient)
        approx.sub_(velocity, alpha=lr)

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return time_per_call(graph.replay, matrix.device, calls)


def lit_step_seconds(
    matrix: torch.Tensor, lr: float, momentum: float, short: int, long: int, **options
) -> float:
    """LitInverse's time per optimizer step: (t(long) - t(short)) / (long - short)."""
    accelerator = "gpu" if matrix.is_cuda else "cpu"
    times = []
    for steps in (short, long):
        model = LitInverse(
            matrix, lr=lr, momentum=momentum, init="zeros", check_rank=False, **options
        )
        trainer = pl.Trainer(
            max_steps=steps,
            accelerator=accelerator,
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        synchronize(matrix.device)
        start = time.perf_counter()
        trainer.fit(model)
        synchronize(matrix.device)
        times.append(time.perf_counter() - start)
    return (times[1] - times[0]) / (long - short)


def run_lengths(floor_seconds: float, quick: bool) -> Tuple[int, int]:
    """Two run lengths for ``lit``: the long run about a second of matrix products (at least
    500 steps, at most 5000), the short one a fifth of it, both whole windows of 100 steps."""
    if quick:
        return 100, 300
    long = int(min(max(1.0 / floor_seconds, 500), 5000)) // 100 * 100
    return long // 5 // 100 * 100 or 100, long


def bench_case(name: str, matrix: torch.Tensor, calls: int, quick: bool) -> Dict:
    device = matrix.device
    s = torch.linalg.svdvals(matrix.double())
    lr, momentum = (
        value.max().item() for value in polyak_parameters(s[..., 0], s[..., -1], matrix.shape[-1])
    )
    other = torch.rand_like(matrix)
    floor = time_per_call(lambda: (other @ matrix) @ matrix.mT, device, calls)
    short, long = run_lengths(floor, quick)
    row = {
        "case": name,
        "shape": list(matrix.shape),
        "dtype": str(matrix.dtype).replace("torch.", ""),
        "steps": [short, long],
        "floor_us": 1e6 * floor,
        "lit_us": 1e6 * lit_step_seconds(matrix, lr, momentum, short, long),
        "inv_us": 1e6 * time_per_call(lambda: torch.linalg.inv(matrix), device, 10),
    }
    row["lit_over_floor"] = row["lit_us"] / row["floor_us"]
    if device.type == "cuda":
        row["graph_us"] = 1e6 * graph_step_seconds(matrix, lr, momentum, calls)
        row["lit_over_graph"] = row["lit_us"] / row["graph_us"]
        row["lit_graph_us"] = 1e6 * lit_step_seconds(
            matrix, lr, momentum, short, long, cuda_graph=True
        )
        row["lit_graph_over_floor"] = row["lit_graph_us"] / row["floor_us"]
        row["lit_graph_over_graph"] = row["lit_graph_us"] / row["graph_us"]
    print(json.dumps(row), flush=True)
    return row


TARGETS = (
    # (what, case, dtype, ratio key(s): the best of them counts, at most)
    (
        "step <= 1.3 x two products",
        "n=1024",
        "float32",
        ("lit_over_floor", "lit_graph_over_floor"),
        1.3,
    ),
    (
        "step <= 1.3 x two products",
        "n=4096",
        "float32",
        ("lit_over_floor", "lit_graph_over_floor"),
        1.3,
    ),
    (
        "step <= 3 x CUDA-graph replay",
        "n=4",
        "float32",
        ("lit_over_graph", "lit_graph_over_graph"),
        3.0,
    ),
    (
        "step <= 3 x CUDA-graph replay",
        "n=64",
        "float32",
        ("lit_over_graph", "lit_graph_over_graph"),
        3.0,
    ),
    (
        "step <= 1.5 x two batched products",
        "4096 x 64x64",
        "float32",
        ("lit_over_floor", "lit_graph_over_floor"),
        1.5,
    ),
)


def markdown(results: Dict) -> str:
    """The README's table of a run, and the issue's targets marked met or not."""

    def cell(row: Dict, key: str, ratio: str = "") -> str:
        if key not in row:
            return "–"
        text = f"{row[key]:.3g}"
        return f"{text} ({row[ratio]:.2f}x)" if ratio in row else text

    lines = [
        f"Device: {results['device']}, torch {results['torch']}.",
        "",
        "| case | dtype | two products (µs) | LitInverse step (µs, x products) | with "
        "cuda_graph (µs, x products) | CUDA-graph replay (µs) | linalg.inv (µs) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in results["rows"]:
        lines.append(
            f"| {row['case']} | {row['dtype']} | {cell(row, 'floor_us')} | "
            f"{cell(row, 'lit_us', 'lit_over_floor')} | "
            f"{cell(row, 'lit_graph_us', 'lit_graph_over_floor')} | "
            f"{cell(row, 'graph_us')} | {cell(row, 'inv_us')} |"
        )
    lines += ["", "| target | case | measured | met |", "| --- | --- | --- | --- |"]
    for what, case, dtype, keys, limit in TARGETS:
        rows = [r for r in results["rows"] if r["case"] == case and r["dtype"] == dtype]
        ratios = [rows[0][key] for key in keys if rows and key in rows[0]]
        measured = min(ratios) if ratios else None
        verdict = "–" if measured is None else ("yes" if measured <= limit else "no")
        shown = "–" if measured is None else f"{measured:.2f}"
        lines.append(f"| {what} | {case} {dtype} | {shown} | {verdict} |")
    to_tol = results.get("to_1e-5")
    if to_tol:
        for key, label in (
            ("auto_over_inv", "invert to 1e-5, the whole call"),
            ("auto_graph_over_inv", "the same with cuda_graph"),
            ("steps_only_over_inv", "its steps alone"),
        ):
            if key in to_tol:
                verdict = "yes" if to_tol[key] < 1 else "no"
                lines.append(
                    f"| time to 1e-5 < linalg.inv: {label} | n={to_tol['n']} float32 | "
                    f"{to_tol[key]:.3g} x inv | {verdict} |"
                )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="small sizes and short runs")
    parser.add_argument("--output", default=None)
    parser.add_argument("--markdown", default=None, help="write the table and targets here")
    parser.add_argument("--render", default=None, help="only print the table of this JSON")
    args = parser.parse_args()
    if args.render:  # e.g. the JSON of a run that a timeout cut short
        with open(args.render) as handle:
            print(markdown(json.load(handle)))
        return
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    device = torch.device(args.device)
    sizes = [4, 64] if args.quick else [4, 64, 256, 1024, 4096]
    batch = (16, 8) if args.quick else (4096, 64)
    calls = 20 if args.quick else 200
    rows: List[Dict] = []
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    results = {"device": name, "torch": torch.__version__, "rows": rows}

    def save() -> None:  # after every case: a run cut short still leaves its figures
        if args.output:
            with open(args.output, "w") as handle:
                json.dump(results, handle, indent=2)

    for dtype in (torch.float32, torch.float64):
        for n in sizes:
            matrix = spd_matrix(n, condition=10.0, dtype=dtype).to(device)
            rows.append(bench_case(f"n={n}", matrix, calls, args.quick))
            save()
        count, n = batch
        matrix = spd_matrix(n, condition=10.0, batch_shape=(count,), dtype=dtype).to(device)
        rows.append(bench_case(f"{count} x {n}x{n}", matrix, calls, args.quick))
        save()
    n = 64 if args.quick else 1024
    matrix = spd_matrix(n, condition=10.0).to(device)
    inv_seconds = time_per_call(lambda: torch.linalg.inv(matrix), device, 10)
    to_tol: Dict = {"n": n, "inv_s": inv_seconds}
    for name, graphed in (("auto", False), ("auto_graph", True)):
        if graphed and device.type != "cuda":
            continue
        invert(matrix, tol=1e-5, cuda_graph=graphed)  # warm-up
        start = time.perf_counter()
        result = invert(matrix, tol=1e-5, cuda_graph=graphed)
        synchronize(device)
        to_tol[f"{name}_s"] = time.perf_counter() - start  # the whole call
        to_tol[f"{name}_steps"] = result.report.steps + result.report.refine_steps
        to_tol[f"{name}_over_inv"] = to_tol[f"{name}_s"] / inv_seconds
    # The steps alone, at the per-step cost measured above for this size:
    same = [row for row in rows if row["shape"] == [n, n] and row["dtype"] == "float32"]
    if same:
        per_step = same[0].get("lit_graph_us", same[0]["lit_us"]) * 1e-6
        to_tol["steps_only_s"] = to_tol["auto_steps"] * per_step
        to_tol["steps_only_over_inv"] = to_tol["steps_only_s"] / inv_seconds
    print(json.dumps(to_tol), flush=True)
    results["to_1e-5"] = to_tol
    save()
    table = markdown(results)
    print(table)
    if args.markdown:
        with open(args.markdown, "w") as handle:
            handle.write(table)


if __name__ == "__main__":
    main()
