"""Running jobs: the plan of model loads, worker processes and what they send back, and the
executors of a sweep's cells (here, one after another, or on a Ray cluster)."""
