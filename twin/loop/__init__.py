"""The closed loop: neuron selection, rig export, response ingest and the report."""
