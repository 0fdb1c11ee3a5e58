"""Plain Linux hosts: the folder source, the host store, the host agent's wiring and its status-file sink.

Reading order: folder (the source: which objects a folder declares, safe against half-written
files), store (one file per object, written atomically, what `vsop apply` fills), agent (`vsop
agent` on a host: the folder and the status file plugged into the node's turn, vsop.node.loop),
status_file (the sink: what `vsop show` reads back).
Must not import: vsop.kube, vsop.cli, kopf, kubernetes.
"""
