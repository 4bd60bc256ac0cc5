"""tlearn.run_folder."""
