"""Dejavoo SPIn REST (v2): the codec (pure) and the aiohttp driver."""
