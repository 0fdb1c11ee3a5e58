"""announce: bgp: BIRD 2 announces the VIPs vsop routes into its own kernel table.

Owns `render` (a BGPSpeaker and the VirtualServices' announcement options into bird.conf,
jinja2 with only checked tokens reaching the file) and `writer` (check a candidate with
`bird -p -c`, rename it into place, `birdc configure`; a refused candidate changes nothing).
A package beside vsop.keepalived, not inside it: keepalived and BIRD are two announcers with
their own daemons, configuration languages and reload paths; what they share is only the
pattern. The handoff itself (the blackhole routes in table 4242) is a kernel object of the
reconciler (vsop.adapters.routes): changing VIPs never rewrites BIRD's configuration.
Must not import: kopf, kubernetes, pyroute2, socket, vsop.adapters, vsop.node, vsop.cli.
"""
