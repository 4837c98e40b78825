"""The chaos run on the real stack (RELIABILITY.md, "Chaos run"): embedded PostgreSQL, the SPIn
simulator process and the gatewayd daemon process, fault proxies on the database and terminal
links, a seeded nemesis, concurrent POS clients, a healed window and the final check of I1-I9;
side by side with a model of the old charge-then-save flow. `python -m tests.chaos --help`."""
