"""convprop.nn — Modules with an explicit backward, named and laid out as torch.nn."""

from .containers import BasicBlock
from .graph import Add, Graph
from .layers import (
    AdaptiveAvgPool2d,
    AdaptiveMaxPool2d,
    AvgPool1d,
    AvgPool2d,
    BatchNorm1d,
    BatchNorm2d,
    Conv1d,
    Conv2d,
    ConvTranspose2d,
    Dropout,
    Flatten,
    LeakyReLU,
    Linear,
    LogSoftmax,
    MaxPool1d,
    MaxPool2d,
    MaxUnpool1d,
    MaxUnpool2d,
    Normalize,
    ReLU,
    Sigmoid,
    Softmax,
    Tanh,
)
from .loss import CrossEntropyLoss, MSELoss
from .module import (
    AnomalyError,
    Module,
    Parameter,
    Sequential,
    call_hook,
    detect_anomaly,
    is_anomaly_enabled,
    is_grad_enabled,
    no_grad,
)

__all__ = [
    "Module", "Parameter", "Sequential", "detect_anomaly", "is_anomaly_enabled", "AnomalyError", "no_grad",
    "is_grad_enabled", "call_hook", "Add", "Graph",
    "Conv2d", "ConvTranspose2d", "MaxPool2d", "MaxUnpool2d", "AvgPool2d", "AdaptiveAvgPool2d", "Linear",
    "Flatten", "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Dropout", "BatchNorm1d", "BatchNorm2d",
    "Softmax", "LogSoftmax", "BasicBlock", "Conv1d", "MaxPool1d", "MaxUnpool1d", "AvgPool1d",
    "AdaptiveMaxPool2d", "CrossEntropyLoss", "MSELoss", "Normalize",
]
