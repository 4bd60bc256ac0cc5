"""tlearn.metrics."""
