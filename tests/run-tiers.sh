#!/usr/bin/env bash
# Runs the test tiers (default: all) and prints one summary line per tier.
# unit: anywhere. netns: root on this machine. vm: inside Debian's kernel under qemu.
# kube: against the kmock API emulator. crd: the CRD and the image's install path checked by
# independent implementations (Google's CEL runtime, jsonschema, pip). A tier that cannot run fails; none is skipped.
set -uo pipefail
cd "$(dirname "$0")/.."
tiers=("$@")
if [ ${#tiers[@]} -eq 0 ]; then
  tiers=(lint unit crd netns vm)
  # The kube tier arrives with the in-cluster agent; run it as soon as it has tests.
  compgen -G "tests/kube/test_*.py" >/dev/null && tiers+=(kube)
fi
mkdir -p .cache
summary=.cache/test-summary.txt
: > "$summary"
status=0

last_line() { grep -E '^(=+ )?[0-9]+ (passed|failed)|no tests ran|error' "$1" | tail -n 1 | sed -E 's/^=+ //; s/ =+$//'; }

run_tier() {
  local tier=$1; shift
  local log=.cache/test-$tier.log start=$SECONDS rc
  echo "=== tier $tier: $*"
  "$@" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  local line; line=$(last_line "$log")
  [ "$tier" = lint ] && line=$(grep -E 'Contracts:' "$log" | tail -n 1)
  if [ "$rc" -ne 0 ]; then status=1; fi
  printf '%-6s %-4s %4ss  %s\n' "$tier" "$([ "$rc" -eq 0 ] && echo ok || echo FAIL)" "$((SECONDS - start))" "${line:-no summary (exit $rc)}" >> "$summary"
}

py=.venv/bin/python
for tier in "${tiers[@]}"; do
  case $tier in
    lint)  run_tier lint .venv/bin/lint-imports ;;
    unit)  run_tier unit $py -m pytest tests/unit -q ;;
    netns) run_tier netns $py -m pytest tests/netns -q ;;
    # kmock and hypothesis plugins cost ~6 s of start-up under emulation; the vm tier uses neither.
    vm)    run_tier vm vm/run --timeout 2400 -- $py -m pytest tests/vm -q -p no:kmock -p no:hypothesispytest ;;
    kube)  run_tier kube $py -m pytest tests/kube -q ;;
    crd)   run_tier crd $py -m pytest tests/crd -q ;;
    *) echo "unknown tier $tier"; exit 2 ;;
  esac
done

echo
echo "=== summary"
cat "$summary"
exit $status
