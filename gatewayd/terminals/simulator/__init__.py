"""A simulator of Dejavoo SPIn terminals for the demo, the tests and the benchmarks."""

from gatewayd.terminals.simulator.ledger import Ledger
from gatewayd.terminals.simulator.server import Simulator, main, running_simulator

__all__ = ["Ledger", "Simulator", "main", "running_simulator"]
