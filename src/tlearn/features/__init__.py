"""tlearn.features."""
