"""The resource: the VirtualService model, its validation, manifests (files, folders, streams) and the generated CRD.

Reading order: errors (how a user's mistake is worded), model (the typed spec and every rule),
manifests (YAML/JSON documents into objects), crd (the schema the API server enforces).
Must not import: any other vsop package (api is the floor every stage stands on), kopf,
kubernetes, pyroute2, jinja2, subprocess, socket, asyncio.
"""
