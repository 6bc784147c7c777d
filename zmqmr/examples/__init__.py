"""Example jobs shipped with zmqmr; run one with --job zmqmr.examples.NAME."""
