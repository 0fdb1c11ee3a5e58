"""keepalived mode: VirtualServices rendered as keepalived configuration, and the agents' writer.

Reading order: servers (the real servers of one VirtualService, whatever its mode, derived by
the core), vrrp (announce: vrrp in ipvs mode: rendezvous priorities spread over the peers, the
track files), render (the jinja2 templates and the two layouts; the command is vsop.cli.render),
writer (what an agent does after a good sync: render, `keepalived -t`, swap in, SIGHUP).
Must not import: kopf, kubernetes, pyroute2, vsop.adapters, vsop.cli (render, servers and vrrp: no
subprocess or socket either; only the writer runs keepalived).
"""
