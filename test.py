"""Evaluate a checkpoint: `python test.py checkpoint=saved/runs/<run>/<time>/checkpoints/best.pt`."""

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from src.utils.config import app_help, register_resolvers, stored_data_overrides, validate_test_config, wants_app_help
from src.utils.errors import exit_on_user_error
from src.utils.run_folder import recorded


register_resolvers()  # configs/hydra/default.yaml uses them


@hydra.main(version_base="1.3", config_path="configs", config_name="test")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    folder = recorded(hydra_cfg.runtime.output_dir)
    with exit_on_user_error(folder, hydra_cfg.output_subdir):
        folder.lock()
        data_chosen = hydra_cfg.runtime.choices.get("data") is not None
        validate_test_config(cfg, data_chosen)
        # Imported only now: `--help` and config errors never pay for importing torch.
        from src.evaluate import evaluate_checkpoint

        evaluate_checkpoint(cfg, data_chosen)


if __name__ == "__main__":
    if wants_app_help(sys.argv[1:]):  # fast: Hydra's own --help formats all of its plugins' groups
        overrides = stored_data_overrides([a for a in sys.argv[1:] if not a.startswith("-")])
        print(app_help("test.py", "test", overrides, "checkpoint=saved/runs/<name>/<time>/checkpoints/best.pt split=val", ["data"]))
        sys.exit(0)
    sys.argv[1:] = stored_data_overrides(sys.argv[1:])
    main()
