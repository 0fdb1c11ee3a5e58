"""vsop: reconcile VirtualService objects into Linux IPVS load balancing."""

__version__ = "0.1.0"
