"""The Lightning glue: ``LitInverse``, its callbacks, ``MatrixDataModule``, ``RunOutputs`` and
``invert()``."""
