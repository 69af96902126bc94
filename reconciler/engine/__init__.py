"""The only layer that touches the Docker engine: the swarm client, the executor, the key source."""
