"""tlearn.infer."""
