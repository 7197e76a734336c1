"""Generated gRPC stubs for ``defense.proto`` (package ``defense.v1``); regenerate with ``proto/generate.py``."""
