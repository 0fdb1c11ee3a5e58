#!/usr/bin/env bash
# The live lab behind `make demo`: runs inside the throwaway VM (vm/run), whose
# kernel has IPVS. It rebuilds the seed's network in network namespaces — two web
# servers 192.168.2.111 and .222 on a LAN behind the node, a client on another link —
# applies examples/seed.yaml unchanged, and shows requests alternating between the
# backends, from the client and from the node itself, then checks the node with
# `vsop doctor` and ends with `vsop explain`, whose counters are those requests.
# Nothing leaves the VM (it has no network device).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${VSOP_IN_VM:-}" = 1 ] || { echo "demo/lab.sh runs inside the VM: make demo" >&2; exit 2; }
VSOP=.venv/bin/vsop
# The host store lives in the VM's own /run (the host's /etc is read-only in here);
# apply writes the objects there, get and the agent read them from there.
export VSOP_STORE=/run/vsop/virtualservices.d
BB=/bin/busybox
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
ns() { ip netns exec "$@"; }

say "building the lab: backends be1 (192.168.2.111) and be2 (192.168.2.222) on bridge lan0, client 10.200.9.2"
ip link add lan0 type bridge && ip addr add 192.168.2.1/24 dev lan0 && ip link set lan0 up
for pair in be1:192.168.2.111 be2:192.168.2.222; do
  name=${pair%%:*} addr=${pair#*:}
  ip netns add "$name"
  ip link add "v-$name" type veth peer name eth0 netns "$name"
  ip link set "v-$name" master lan0 up
  ns "$name" ip addr add "$addr/24" dev eth0
  ns "$name" ip link set eth0 up
  ns "$name" ip link set lo up
  # No default route: a reply reaches a client only if the node masqueraded the request.
  mkdir -p "/tmp/www-$name" && echo "hello from $name ($addr)" > "/tmp/www-$name/index.html"
  ns "$name" $BB httpd -p 8080 -h "/tmp/www-$name"
done
ip netns add client
ip link add v-client type veth peer name eth0 netns client
ip addr add 10.200.9.1/24 dev v-client && ip link set v-client up
ns client ip addr add 10.200.9.2/24 dev eth0 && ns client ip link set eth0 up && ns client ip link set lo up
ns client ip route add default via 10.200.9.1

say "vsop plan -f examples/seed.yaml   (what vsop will tell this kernel)"
$VSOP plan -f examples/seed.yaml --node-name lab

say "vsop apply -f examples/seed.yaml   (stored in $VSOP_STORE, then programmed)"
$VSOP apply -f examples/seed.yaml --node-name lab
ls -l "$VSOP_STORE"

say "vsop get"
$VSOP get --node-name lab

say "six requests from the client namespace to http://169.254.11.2/"
for i in 1 2 3 4 5 6; do ns client curl -s --max-time 5 http://169.254.11.2/; done

say "four requests from the node itself (locally originated traffic, through the OUTPUT hook)"
for i in 1 2 3 4; do curl -s --max-time 5 http://169.254.11.2/; done

say "vsop show"
$VSOP show

say "vsop apply again: nothing to change"
$VSOP apply -f examples/seed.yaml --node-name lab

say "vsop cleanup --dry-run: what cleanup would remove (everything vsop owns, nothing else)"
$VSOP cleanup --dry-run

say "vsop doctor: every known cause of a dead VIP, checked"
$VSOP doctor

say "vsop explain 169.254.11.2:80: the path of those requests, hook by hook, with their counters"
$VSOP explain 169.254.11.2:80
