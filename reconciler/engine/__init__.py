"""The only layer that touches the Docker engine: the :class:`~reconciler.engine.protocol.Swarm`
protocol, its Docker implementation (``swarm.py``), the executor and the key source."""
