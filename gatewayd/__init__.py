"""gatewayd: all-or-nothing card payments for retail stores."""

__version__ = "0.1.0"
