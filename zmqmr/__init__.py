"""zmqmr: MapReduce jobs written in plain Python, run over ZeroMQ."""

__version__ = "0.1.0"
