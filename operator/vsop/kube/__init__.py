"""The Kubernetes layer: the in-cluster node agent and controller, built on kopf.

Owns watching the cluster (kopf indexes and event handlers that store nothing on the
objects), turning VirtualServices, EndpointSlices and Nodes into engine input, and
reporting back (status, Events, health, metrics). The kernel work is the engine's.
Entry points: `vsop.kube.agent.main(argv)` and `vsop.kube.controller.main(argv)`.
Nothing outside this package may import it but the command line.
"""
