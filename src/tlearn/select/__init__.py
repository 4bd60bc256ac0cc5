"""tlearn.select."""
