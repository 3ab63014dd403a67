"""Train an approximate inverse from a YAML config: ``python train.py fit --config CONFIG``."""

from gdinv_modules.cli.train import main

if __name__ == "__main__":
    main()
