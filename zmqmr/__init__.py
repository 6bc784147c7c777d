"""zmqmr: MapReduce jobs written in plain Python, run over ZeroMQ."""

__version__ = "0.1.0"

from . import counters  # noqa: E402,F401  (zmqmr.counters.increment in user code)
