"""One suite, two swarms: the in-memory fake and the real engine (see conftest.py)."""
