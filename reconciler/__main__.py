"""``python -m reconciler``: the same command line as ``swarm-secrets``."""

from reconciler.cli import main

if __name__ == "__main__":
    main(prog_name="swarm-secrets")
