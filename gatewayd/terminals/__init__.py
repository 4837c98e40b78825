"""Card terminals: outcomes, the driver interface, the SPIn driver, the simulator, lanes and health."""
