"""`tlearn audit`: is a data set clean? Duplicates (exact and near, across splits), likely label
errors, class balance and odd images (run.py ties hashing, duplicates, label_issues, oddities
and page together)."""
