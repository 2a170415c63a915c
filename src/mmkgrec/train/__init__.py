"""Training: negative sampling, the shared Trainer, safetensors checkpoints.

Typical use::

    from mmkgrec.train import Trainer
    results = Trainer(model, split, {"epochs": 20, "loss": "bce"}, out_dir="runs/kgcn").fit()
"""

from mmkgrec.graph.negatives import NegativeSampler
from mmkgrec.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from mmkgrec.train.trainer import TrainConfig, Trainer, resolve_device, seed_everything

__all__ = [
    "CheckpointError",
    "NegativeSampler",
    "TrainConfig",
    "Trainer",
    "load_checkpoint",
    "resolve_device",
    "save_checkpoint",
    "seed_everything",
]
