"""The attacks, the registry of their names, and the named suites (presets)."""
