"""ksocket: an open re-implementation of the Ksocket v2 network scanning agent."""

__version__ = "2.1.1"
