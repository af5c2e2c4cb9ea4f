"""Export a trained model: `python export.py checkpoint=PATH format=onnx|torch_export|torchscript` (see configs/export.yaml)."""

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from src.utils.config import app_help, register_resolvers, validate_export_config, wants_app_help
from src.utils.errors import exit_on_user_error
from src.utils.run_folder import recorded

register_resolvers()  # configs/hydra/default.yaml uses them


@hydra.main(version_base="1.3", config_path="configs", config_name="export")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    folder = recorded(hydra_cfg.runtime.output_dir)
    with exit_on_user_error(folder, hydra_cfg.output_subdir):
        folder.lock()
        validate_export_config(cfg)
        # Imported only now: `--help` and config errors never pay for importing torch.
        from src.export import ExportFailed, export_checkpoint
        from src.utils.console import report_error

        try:
            export_checkpoint(cfg)
        except ExportFailed as err:  # not bad input: the model and the format do not agree
            report_error(str(err))
            raise SystemExit(1) from None


if __name__ == "__main__":
    if wants_app_help(sys.argv[1:]):  # fast: Hydra's own --help formats all of its plugins' groups
        overrides = [a for a in sys.argv[1:] if not a.startswith("-")]
        print(app_help("export.py", "export", overrides, "checkpoint=saved/runs/<name>/<time>/checkpoints/best.pt format=onnx", []))
        sys.exit(0)
    main()
