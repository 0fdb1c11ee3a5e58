"""keepalived mode: VirtualServices rendered as keepalived configuration.

Owns `servers` (the real servers of one VirtualService, whatever its mode, derived by
the core) and `render` (the jinja2 templates, the layouts and `vsop render keepalived`).
Must not import: kopf, kubernetes, pyroute2, subprocess, socket, vsop.adapters, vsop.cli.main.
"""
