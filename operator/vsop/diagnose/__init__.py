"""Reading one node back to a person: `vsop explain`, `vsop doctor`, `vsop show`, and the facts they read.

Reading order: facts (the shape and the tools' text parsers), gather (the only module that reads
the host for them), explain (one packet's path hook by hook), doctor (every known cause of a dead
VIP, each with its fix), show (what vsop owns here). Must not import: vsop.cli.main, vsop.kube, kopf.
"""
