"""Training: everything a run is built from, the one training loop, TensorBoard and DDP."""
