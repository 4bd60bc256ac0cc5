"""tlearn.training."""
