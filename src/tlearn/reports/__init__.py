"""tlearn.reports."""
