"""The contract and the types everything else shares: the backend contract and its registry,
run records and their schema, worker events, settings, models and the machine's fingerprint."""
