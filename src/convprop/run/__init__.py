"""One training run (`convprop train`): settings.py says what it trains (and checks every setting),
rundir.py claims and locks its directory, metrics.py writes and reads its metrics.json, and core.py's
`Run` wires them to the data, the model and the training loop."""

from ..errors import RunDiverged, RunInterrupted
from .core import Run, make_optimizer, run_training
from .data import RunData, _subset, load_run_data
from .metrics import MAX_METRICS_BYTES, read_metrics, write_metrics
from .rundir import BEST_NAME, CHECKPOINT_NAME, LOCK_NAME, METRICS_NAME, DirectoryLock, claim, holds_run, make_directory
from .settings import DEFAULT_LR, MAX_BATCH, MAX_EPOCHS, OPTIMIZERS, RunError, Settings, default_out, problem

__all__ = ["Run", "RunDiverged", "RunInterrupted", "RunError", "Settings", "DirectoryLock", "run_training",
           "read_metrics", "write_metrics", "make_optimizer", "claim", "holds_run", "make_directory", "default_out",
           "problem", "CHECKPOINT_NAME", "METRICS_NAME", "LOCK_NAME", "DEFAULT_LR", "MAX_EPOCHS", "MAX_BATCH",
           "OPTIMIZERS", "MAX_METRICS_BYTES", "_subset", "BEST_NAME", "RunData", "load_run_data"]
