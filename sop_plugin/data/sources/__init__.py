"""Loaders, one module per kind of source; the registry wires them to names."""
