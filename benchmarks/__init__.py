"""convprop's benchmark suite: convprop and PyTorch side by side in one process (`python -m benchmarks`)."""
