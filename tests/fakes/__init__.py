"""In-memory stand-ins for the executor's unit tests (a swarm, a clock); see ``tests/contract/``."""
