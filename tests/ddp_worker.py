"""Run LitInverse under Lightning's DDP on the CPU (gloo) and save what rank 0 ends with.

    python tests/ddp_worker.py OUTPUT.pt SHARD [DEVICES [eager|graph]]

``eager`` and ``graph`` run 1500 steps instead of 400, past the tuner's frequent early retunes;
``graph`` with ``cuda_graph=True`` under CUDA graphs' semantics emulated on the CPU
(graph_emulator.py). Used by test_distributed.py; Lightning's launcher starts the other
processes by running this same script again.
"""

import sys
import warnings
from types import SimpleNamespace

import pytorch_lightning as pl
import torch
from graph_emulator import emulate_cuda_graphs

from gdinv_modules import LitInverse
from gdinv_modules.core.matrices import random_matrix, spd_matrix


def problems():
    batch = torch.stack(
        [
            spd_matrix(6, condition=c, seed=i, dtype=torch.float64)
            for i, c in enumerate((2.0, 10.0, 50.0, 5.0, 20.0))
        ]
    )
    return {"batch": batch, "one": random_matrix(9, seed=3, dtype=torch.float64)}


def main() -> None:
    output, shard = sys.argv[1], sys.argv[2]
    devices = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    graph = sys.argv[4:] == ["graph"]
    max_steps = 1500 if sys.argv[4:] in (["eager"], ["graph"]) else 400
    if graph:
        emulate_cuda_graphs(SimpleNamespace(setattr=setattr))
    warnings.filterwarnings("ignore")
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
        trainer.fit(model)
        results[name] = {
            "inverse": model.inverse.clone(),
            "losses": model.losses.clone(),
            "loss": trainer.callback_metrics["loss"].clone(),
            "mode": model.stepper.sharding.mode,
            "replays": 0 if model.stepper.step_graph is None else model.stepper.step_graph.replays,
        }
    if trainer.global_rank == 0:
        torch.save(results, output)


if __name__ == "__main__":
    main()
