"""The Method interface every label-noise method implements, and the registry decorator.

The pipeline owns data, model creation, warm-up, evaluation, model selection, checkpoints and outputs; a method
owns only its main-phase training (`train_epoch`) and what it learns about each training image
(`soft_labels`, optionally `flag_scores`). Its per-image state is indexed by the training set's sample index.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    import numpy as np
    import torch

    from engine.train.context import TrainContext

registry: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method available by `cls.name` to the CLI, the app and the tests."""
    if cls.name in registry and registry[cls.name] is not cls:
        raise ValueError(f"method name '{cls.name}' registered twice")
    registry[cls.name] = cls
    return cls


def param(default, help: str, *, choices: tuple | None = None):  # noqa: A002 - mirrors argparse
    """A hyper-parameter field with its one-line help (shown by the CLI and the app); cite the paper in `help`."""
    return field(default=default, metadata={"help": help, **({"choices": choices} if choices else {})})


@dataclass(frozen=True)
class NoParams:
    """Methods without hyper-parameters of their own."""


class Method:
    """One main-phase training algorithm.

    Life cycle: `__init__(cfg, ctx)` → `start()` once after warm-up (skipped on resume, where
    `load_state_dict` restores the state instead) → `train_epoch(epoch)` per main-phase epoch → `soft_labels()`.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    config_cls: ClassVar[type] = NoParams
    needs_meta: ClassVar[bool] = True  # uses the meta set for training (not only for model selection)
    uses_unlabeled: ClassVar[bool] = False  # rows with role=unlabeled take part in the main phase
    learns_labels: ClassVar[bool] = False  # keeps its own soft labels (their drift from the majority is logged)
    meta_rows_per_process: ClassVar[int] = 2  # meta images each process needs per meta batch (several processes)

    @classmethod
    def process_problems(cls, params: dict, processes: int) -> list:
        """Problems with running this method's parameters `params` on `processes` processes (engine.distributed)."""
        return []

    def __init__(self, cfg, ctx: TrainContext):
        self.cfg = cfg
        self.ctx = ctx

    def start(self) -> None:
        """Create per-method state after warm-up (label variables, label networks, ...)."""

    def train_epoch(self, epoch: int) -> dict:
        """Train one main-phase epoch; return mean losses/metrics to log (floats)."""
        raise NotImplementedError

    def soft_labels(self) -> torch.Tensor:
        """(N_train, K) probabilities, one row per training-set sample index (rows sum to 1)."""
        return self.ctx.predict_train()

    def flag_scores(self) -> np.ndarray | None:
        """Optional (N_train,) score ordering the review queue (higher = more likely wrong). None = default rule."""
        return None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def model_for_eval(self) -> torch.nn.Module:
        """The network to evaluate / save (methods that keep several copies override)."""
        return self.ctx.model
