"""The digital twin: a convolutional core shared by all neurons, one readout per session."""
