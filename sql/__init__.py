"""The migrations, installed as the package gatewayd.sql (see setup.py and gatewayd.store.migrate)."""
