"""The config of a resumed run: the checkpoint's own config, with the command line's
single-value overrides on top."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from src.utils.errors import UserError

# Components whose saved state only loads into the same class.
STATEFUL = ("model", "optimizer", "scheduler", "loss")


def resumed_config(cfg: DictConfig, state: dict[str, Any], overrides: list[str], groups: set[str]) -> DictConfig:
    """`cfg` is what Hydra composed from the command line; `state` the checkpoint (its
    config and group choices); `overrides` the command line's overrides; `groups` the
    names of the config groups. A group choice (`model=cnn`) may only repeat the saved
    one, which lets Hydra accept that group's keys (`model=cnn model.dropout=0.2`)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    saved = OmegaConf.create(state["config"])
    saved_choices = state.get("choices", {})
    merged = OmegaConf.create(OmegaConf.to_container(saved))
    # Trainer keys newer than the checkpoint take their defaults.
    merged.trainer = OmegaConf.merge(cfg.trainer, saved.get("trainer", {}))
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        if key == "resume" or key.startswith("hydra"):
            continue
        if key in groups:
            if saved_choices.get(key) == override.value():
                continue
            raise UserError(
                f"Cannot change the config group choice {override.input_line!r} when resuming (the run used "
                f"{key}={saved_choices.get(key, '?')}): a resumed run continues with the config stored in its "
                f"checkpoint. Override single values instead (e.g. trainer.epochs=30), or start a new run."
            )
        if override.is_delete():
            raise UserError(f"Cannot delete {key!r} when resuming; override its value instead.")
        OmegaConf.update(merged, key, OmegaConf.select(cfg, key), force_add=True)
    merged.resume = cfg.resume
    for name in STATEFUL:
        before, after = OmegaConf.select(saved, f"{name}._target_"), OmegaConf.select(merged, f"{name}._target_")
        if before != after:
            raise UserError(
                f"Cannot resume with {name}._target_={after!r}: the checkpoint's {name} state was saved by "
                f"{before!r} and only loads into the same class. Start a new run to switch {name}s."
            )
    return merged


def changed_optimizer_values(saved_yaml: str, cfg: DictConfig) -> dict[str, object]:
    """Optimizer hyperparameters the resumed config changes (e.g. `optimizer.lr=1e-4`).

    Loading the optimizer's state restores its saved param_groups, so these are
    applied on top afterwards; otherwise a resume would silently ignore them."""
    saved = OmegaConf.create(saved_yaml).get("optimizer", {})
    return {
        key: value
        for key, value in OmegaConf.to_container(cfg.optimizer, resolve=True).items()  # type: ignore[union-attr]
        if not key.startswith("_") and saved.get(key) != value
    }
