"""Plain Linux hosts: the folder source, the host store, the host agent's wiring and its status-file sink.

Reading order: folder (which objects a folder declares, safe against half-written files), store
(one file per object, written atomically), agent (`vsop agent` on a host: folder -> node turn),
status_file (what `vsop show` reads back). Must not import: vsop.kube, vsop.cli.main, kopf, kubernetes.
"""
