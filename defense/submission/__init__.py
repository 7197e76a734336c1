"""The submission and its local check: crisp.yaml and the Dockerfile validated, then served and tested as the
competition would. Needs the ``check`` extra (PyYAML, dockerfile-parse); not part of the server image."""
