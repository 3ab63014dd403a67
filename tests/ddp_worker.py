"""Run LitInverse under Lightning's DDP on the CPU (gloo) and save what rank 0 ends with.

    python tests/ddp_worker.py OUTPUT.pt DEVICES RUN [RUN ...]

A RUN is a shard mode (``batch``, ``columns``) for 400 steps, or ``batch-graph``: 1500 steps,
past the tuner's frequent early retunes, with ``cuda_graph=True`` under CUDA graphs' semantics
emulated on the CPU (graph_emulator.py; runs after it replay, so it goes last). One launch
serves every run: each start of Lightning's processes costs seconds. Used by
test_distributed.py, which calls :func:`fit_problems` in its own process for one device;
Lightning's launcher starts the other processes by running this same script again.
"""

import sys
import warnings
from types import SimpleNamespace

import pytorch_lightning as pl
import torch
from graph_emulator import emulate_cuda_graphs

from gdinv_modules import LitInverse
from gdinv_modules.core.matrices import random_matrix, spd_matrix

GRAPH_STEPS = 1500


def problems():
    batch = torch.stack(
        [
            spd_matrix(6, condition=c, seed=i, dtype=torch.float64)
            for i, c in enumerate((2.0, 10.0, 50.0, 5.0, 20.0))
        ]
    )
    return {"batch": batch, "one": random_matrix(9, seed=3, dtype=torch.float64)}


def fit_problems(shard: str, devices: int, max_steps: int, graph: bool = False) -> dict:
    """Both problems fitted with ``shard`` over ``devices`` processes: what rank 0 holds."""
    results = {}
    for name, matrix in problems().items():
        model = LitInverse(
            matrix,
            lr="auto",
            momentum="auto",
            init="zeros",
            shard=shard,
            steps_per_window=50,
            cuda_graph=graph,
        )
        trainer = pl.Trainer(
            accelerator="cpu",
            devices=devices,
            strategy="ddp" if devices > 1 else "auto",
            max_steps=max_steps,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(model)
        results[name] = {
            "inverse": model.inverse.clone(),
            "losses": model.losses.clone(),
            "loss": trainer.callback_metrics["loss"].clone(),
            "mode": model.stepper.sharding.mode,
            "replays": 0 if model.stepper.step_graph is None else model.stepper.step_graph.replays,
        }
    return results


def main() -> None:
    output, devices, runs = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    results = {}
    for run in runs:
        if run == "batch-graph":
            emulate_cuda_graphs(SimpleNamespace(setattr=setattr))
            results[run] = fit_problems("batch", devices, GRAPH_STEPS, graph=True)
        else:
            results[run] = fit_problems(run, devices, 400)
    if torch.distributed.get_rank() == 0:
        torch.save(results, output)


if __name__ == "__main__":
    main()
