"""Kernel adapters: real ones (netlink, ipset, iptables-restore, sysctl) and in-memory fakes."""
