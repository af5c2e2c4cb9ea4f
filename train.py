"""Train a model: `python train.py model=mlp data=fashion_mnist` (see configs/train.yaml)."""

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from src.utils.config import register_resolvers, validate_train_config
from src.utils.errors import exit_on_user_error

register_resolvers()  # used by configs/hydra/default.yaml to place resumed runs


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    with exit_on_user_error(run_dir, run_dir / hydra_cfg.output_subdir):
        validate_train_config(cfg)
        # Imported only now: `--help` and config errors never pay for importing torch.
        from src.train import train

        return train(cfg)


if __name__ == "__main__":
    main()
