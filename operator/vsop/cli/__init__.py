"""The `vsop` command line: one module per command group, each with `register(subparsers)` and
`run(args) -> Result`; main prints the Result once, as text or JSON.

Reading order: main (the parser from the groups' registers, dispatch, errors to exit codes),
output (exit codes, the Result and how it is printed, the error object), common (what several
commands share: input files, this node, op JSON, refused problems, conntrack notes), verdicts
(the running agent's health verdicts and drains, which plan, apply and delete keep), then the
groups: plan, store (apply, delete, get, and the store-aware part of plan), show, diagnose
(explain, doctor), cleanup, render (`vsop render keepalived`, its own parser), crd (crd, version),
pools, bird, agents (`vsop agent` and `vsop controller`: their flags once, and their start-up).
A group imports common, output and verdicts, never main or a sibling (plan reads the store through store).
Nothing below cli imports it (pyproject.toml's floors).
"""
