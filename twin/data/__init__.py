"""Session stores, importers, the simulated animal and the batch loader. Never imports JAX."""
