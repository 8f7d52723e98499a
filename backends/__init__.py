"""Built-in backends, one module each. Each imports its engine only when loading."""
