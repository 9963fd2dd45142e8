"""The equations `convprop explain` prints and `convprop serve` shows beside its pictures: one place for both.

Plain strings, no imports: the server loads this module alone, not the topics that compute the examples.
"""

# The equations of the steps that the page shows next to its pictures.
EQUATIONS = {
    "conv.forward": "Z_ij = Σ_ab K_ab · A_(i·s+a, j·s+b) + B   (cross-correlation, as torch)",
    "conv.dA": "∂A = K ⋆ᵀ ∂Z   (conv2d_backward)",
    "conv.dW": "O_ij = A_patch_ij ⊙ ∂Z_ij,   ∂W = Σ_ij O_ij",
    "conv.dB": "∂B = Σ_ij ∂Z_ij",
    "maxpool.unpool": "mask = 0;  mask[indices] += ∂Z^l",
    "maxpool.act": "∂Z^(l-1) = max-unpool(∂Z^l) ⊙ act'(Z^(l-1))",
    "avgpool.divide": "∂Z_ij / r",
    "avgpool.spread": "window ij gets ∂Z_ij / r in each of its cells",
    "avgpool.sum": "∂A = Σ_windows spread",
    "loss": "L = −log softmax(z)_y,   ∂L/∂z = softmax(z) − onehot(y)",
}

# The rule of each layer's backward, as the network topic and the page print it.
LAYER_RULES = {
    "Linear": "∂A = ∂Z W  (= Wᵀ ∂Z as columns),  ∂W = ∂Zᵀ A,  ∂b = Σ ∂Z",
    "Flatten": "∂ reshaped back to (C, H, W)",
    "MaxPool2d": "max-unpool: each ∂ goes to its window's argmax",
    "ReLU": "∂Z = ∂A ⊙ [Z > 0]",
    "Conv2d": "∂A = K ⋆ᵀ ∂Z,  ∂K = Σ A_patch ⊙ ∂Z_ij,  ∂B = Σ ∂Z",
    "fork": "∂x = ∂x|_f + ∂x|_shortcut   (x fed both branches: their ∂ add)",
    "join": "∂f(x) = ∂shortcut(x) = ∂s   (a sum hands its ∂ to both branches unchanged)",
}
