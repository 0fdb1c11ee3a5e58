"""The Kubernetes layer: the in-cluster node agent and the controller, built on kopf.

Reading order: client (the API server connection and the writes vsop makes), runtime (kopf
settings, the listing gate, running kopf and a loop together, log lines), objects and endpoints
(VirtualServices, EndpointSlices and Nodes into node input, pure), source (the agent's watches:
kopf indexes and handlers that store nothing on the objects, what changed per turn), checkers
(which node probes a static backend for the cluster), report, status and announce (NodeReport
entries, conditions, who announces a VIP; pure), sink (the agent's NodeReport entries, Events, object states), agent (the
source and the sink plugged into the node's turn, vsop.node.loop), controller (sums up the nodes'
reports), speakers (the BGPSpeaker for this node), apiserver, metrics, toggles and reflector (two fixes to kopf: index readiness in O(objects),
and relists that delete what a watch gap hid).
The kernel work is vsop.node's; the command line (vsop.cli.agents) builds the real kernel and starts
both components. Must not import: vsop.host, vsop.cli (but vsop.node.logs, the shared log format);
nothing outside this package imports it but the command line.
"""
