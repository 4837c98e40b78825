"""Seeded fault simulation of gatewayd (RELIABILITY.md, "Simulation").

The real coordinator, lanes, recovery and health monitor run on a virtual-time event loop
against in-memory fakes of PostgreSQL and the card terminals that inject faults drawn from a
seed. A run is a pure function of its seed: `python -m tests.sim --seed N -v` replays one.
See docs/simulation.md.
"""
