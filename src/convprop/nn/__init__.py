"""convprop.nn — Modules with an explicit backward, named and laid out as torch.nn."""

from .containers import BasicBlock
from .layers import (
    AdaptiveAvgPool2d,
    AvgPool2d,
    BatchNorm1d,
    BatchNorm2d,
    Conv2d,
    ConvTranspose2d,
    Dropout,
    Flatten,
    LeakyReLU,
    Linear,
    LogSoftmax,
    MaxPool2d,
    MaxUnpool2d,
    ReLU,
    Sigmoid,
    Softmax,
    Tanh,
)
from .loss import CrossEntropyLoss, MSELoss
from .module import AnomalyError, Module, Parameter, Sequential, detect_anomaly, is_anomaly_enabled

__all__ = [
    "Module", "Parameter", "Sequential", "detect_anomaly", "is_anomaly_enabled", "AnomalyError",
    "Conv2d", "ConvTranspose2d", "MaxPool2d", "MaxUnpool2d", "AvgPool2d", "AdaptiveAvgPool2d", "Linear",
    "Flatten", "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Dropout", "BatchNorm1d", "BatchNorm2d",
    "Softmax", "LogSoftmax", "BasicBlock", "CrossEntropyLoss", "MSELoss",
]
