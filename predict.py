"""Predict with a trained model: `python predict.py checkpoint=PATH inputs=PATH` (see configs/predict.yaml)."""

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from src.utils.config import app_help, register_resolvers, validate_predict_config, wants_app_help
from src.utils.errors import exit_on_user_error
from src.utils.run_folder import recorded

register_resolvers()  # configs/hydra/default.yaml uses them


@hydra.main(version_base="1.3", config_path="configs", config_name="predict")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    folder = recorded(hydra_cfg.runtime.output_dir)
    with exit_on_user_error(folder, hydra_cfg.output_subdir):
        folder.lock()
        validate_predict_config(cfg)
        # Imported only now: `--help` and config errors never pay for importing torch.
        from src.predict import predict_files

        predict_files(cfg)


if __name__ == "__main__":
    if wants_app_help(sys.argv[1:]):  # fast: Hydra's own --help formats all of its plugins' groups
        overrides = [a for a in sys.argv[1:] if not a.startswith("-")]
        print(app_help("predict.py", "predict", overrides, "checkpoint=saved/runs/<name>/<time>/checkpoints/best.pt inputs=photos/", []))
        sys.exit(0)
    main()
