"""The `vsop` command line: one module per command group, exit codes, one voice for errors.

Reading order: main (the parser and dispatch), output (exit codes and the error object), store
(apply, delete, get, store-aware plan), diagnose (explain and doctor), logs (klog-style logging
for every vsop process). Nothing below cli imports it, except the keepalived renderer's own command.
"""
