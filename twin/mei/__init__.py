"""Most exciting inputs: batched gradient ascent over (neuron, seed) pairs in one compiled program."""
