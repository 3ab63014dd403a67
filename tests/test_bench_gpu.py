"""The GPU benchmark's verdicts on the issue's targets (its timings need a GPU)."""

import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location(
    "bench_gpu", Path(__file__).parent.parent / "benchmarks" / "bench_gpu.py"
)
bench_gpu = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_gpu)


def row(case, **ratios):
    return {"case": case, "dtype": "float32", "floor_us": 100.0, "lit_us": 130.0, **ratios}


def test_a_target_counts_the_best_of_eager_and_graphed_steps():
    results = {
        "device": "NVIDIA H100",
        "torch": "2.x",
        "rows": [
            row("n=1024", lit_over_floor=1.6, lit_graph_over_floor=1.2),  # met by the graph
            row("n=4096", lit_over_floor=1.4),  # not met, and no graphed run
            row("n=4", lit_over_graph=5.0, lit_graph_over_graph=2.9),
        ],
        "to_1e-5": {"n": 1024, "auto_over_inv": 40.0, "steps_only_over_inv": 0.5},
    }
    table = bench_gpu.markdown(results)
    assert "| step <= 1.3 x two products | n=1024 float32 | 1.20 | yes |" in table
    assert "| step <= 1.3 x two products | n=4096 float32 | 1.40 | no |" in table
    assert "| step <= 3 x CUDA-graph replay | n=4 float32 | 2.90 | yes |" in table
    assert "| step <= 3 x CUDA-graph replay | n=64 float32 | – | – |" in table
    assert "the whole call | n=1024 float32 | 40 x inv | no |" in table
    assert "its steps alone | n=1024 float32 | 0.5 x inv | yes |" in table
    assert "| n=1024 | float32 | 100 | 130 (1.60x) | – |" in table
