"""The hot loop, usable without a Trainer: ``HeavyBallStepper`` takes windows of heavy-ball
steps (with the tuner, the loss history, the DDP split and the CUDA-graph path behind it),
``StoppingPolicy`` decides when descent stops and refinement takes over, and ``invert()``,
``InverseTracker`` and ``inverse_of`` build on them."""
