"""The Lightning glue: ``LitInverse`` and the callbacks it installs for itself, the callbacks
for your own Trainer (``TrackInverse``, ``ResumableCheckpoint``), ``MatrixDataModule``,
``RunOutputs``; ``unified`` makes the same classes for the ``lightning`` package."""
