"""Building a component (model, loss, optimizer, ...) from its `_target_` config, with
failures explained. Light to import: inference builds its model with it too."""

from __future__ import annotations

from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from src.utils.errors import UserError, one_line


def build(group: str, node: DictConfig, *call_args: Any, **kwargs: Any) -> Any:
    """`instantiate(node, **kwargs)`, called with `call_args` for `_partial_` configs;
    failures become a UserError naming the config group."""
    try:
        obj = instantiate(node, **kwargs)
        return obj(*call_args) if call_args else obj
    except Exception as err:
        cause = err.__cause__ or err
        if isinstance(cause, UserError):  # already says what is wrong
            raise cause from None
        reason = one_line(cause)
        raise UserError(
            f"Could not build the {group} from its config (_target_={node.get('_target_')}): "
            f"{type(cause).__name__}: {reason}. Check the {group}.* values "
            f"(set HYDRA_FULL_ERROR=1 to see the traceback)."
        ) from err
