"""`python -m gatewayd.terminals.simulator --port P`."""

from gatewayd.terminals.simulator.server import main

raise SystemExit(main())
