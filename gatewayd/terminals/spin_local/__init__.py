"""SPIn Local: the XML dialect, one HTTP GET per operation straight to the terminal on the LAN."""
