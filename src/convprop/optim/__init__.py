"""convprop.optim — torch.optim's update rules and schedulers for convprop Parameters."""

from . import lr_scheduler
from .lr_scheduler import CosineAnnealingLR, LRScheduler, OneCycleLR, StepLR
from .optimizer import SGD, Adam, AdamW, Optimizer

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "LRScheduler", "StepLR", "CosineAnnealingLR", "OneCycleLR",
           "lr_scheduler"]
