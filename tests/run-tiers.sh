#!/usr/bin/env bash
# Runs the test tiers (default: all) and prints one summary line per tier.
# unit: anywhere. netns: root on this machine. vm: inside Debian's kernel under qemu.
# kube: against the kmock API emulator. crd: the CRD and the image's install path checked by
# independent implementations (Google's CEL runtime, jsonschema, pip). lint: import-linter contracts.
# image: the Dockerfile built by buildah (make image) and its root filesystem run here and in the VM.
#
# A tier is green only when it passed something, failed nothing, deselected nothing and
# skipped only what tests/allowed-skips.txt allows, with its reason (tests/tier_verdict.py
# reads pytest's counts and `-rs` report). A tier whose preconditions are missing (root,
# keepalived, kubectl, the VM) fails: none is skipped. PYTEST_ADDOPTS is refused, not
# forwarded (vm/run would carry it into the VM): a -k or -m there would hide tests.
#
# Hypothesis runs its derandomized `ci` profile here (tests/conftest.py); `make test-random`
# runs the property tests with a fresh, printed seed.
#
#   tests/run-tiers.sh [TIER...]
#   tests/run-tiers.sh --verdict TIER LOG EXIT_CODE   (the judgment alone, on a saved pytest output)
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = --verdict ]; then
  shift
  exec python3 tests/tier_verdict.py "$@"
fi

if [ -n "${PYTEST_ADDOPTS:-}" ]; then
  echo "run-tiers.sh: PYTEST_ADDOPTS is set ($PYTEST_ADDOPTS): every test of a tier runs; unset it (use .venv/bin/python -m pytest directly for a subset)" >&2
  exit 2
fi
unset PYTEST_ADDOPTS
if [ -n "${CI:-}" ] && [ -n "${VSOP_UPDATE_GOLDEN:-}" ]; then
  echo "run-tiers.sh: VSOP_UPDATE_GOLDEN is set under CI: goldens are never rewritten by CI" >&2
  exit 2
fi

tiers=("$@")
if [ ${#tiers[@]} -eq 0 ]; then
  tiers=(lint unit crd netns vm kube image)
fi
mkdir -p .cache
summary=.cache/test-summary.txt
: > "$summary"
status=0

record() {  # tier seconds verdict-line
  printf '%-6s %4ss  %s\n' "$1" "$2" "$3" >> "$summary"
}

run_tier() {
  local tier=$1; shift
  local log=.cache/test-$tier.log start=$SECONDS rc line hung=""
  echo "=== tier $tier: $*"
  "$@" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  # A kube test stuck past its bound (pytest-timeout ends the whole run, so the tests after it never
  # ran): the tier runs once more, and its summary line names the stuck test and keeps the first
  # log. Only a hang is run again; a test that fails fails the tier.
  if [ "$tier" = kube ] && [ "$rc" -ne 0 ] && grep -q '+++ Timeout +++' "$log"; then
    hung=$(sed -n 's/^=== \(tests\/kube\/[^ ]*\): still running after.*/\1/p' "$log" | head -n 1)
    hung=${hung:-a test}
    cp "$log" ".cache/test-$tier-hung.log"
    echo "=== tier $tier: $hung hung past its bound (.cache/test-$tier-hung.log); running the tier once more" >&2
    "$@" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
  fi
  if [ "$tier" = lint ]; then
    line=$(grep -E 'Contracts:' "$log" | tail -n 1)
    if [ "$rc" -eq 0 ] && [[ "$line" =~ ([0-9]+)\ kept,\ 0\ broken ]] && [ "${BASH_REMATCH[1]}" -gt 0 ]; then
      line="ok  $line"
    else
      line="FAIL  ${line:-no contracts summary} (exit $rc)"
    fi
  else
    line=$(python3 tests/tier_verdict.py "$tier" "$log" "$rc")
  fi
  [[ "$line" == ok* ]] || status=1
  [ -z "$hung" ] || line="$line; run again after $hung hung (.cache/test-$tier-hung.log)"
  record "$tier" "$((SECONDS - start))" "$line"
}

precondition() {  # tier message: the tier cannot run here; that is a failure, not a skip
  echo "=== tier $1: cannot run: $2" >&2
  record "$1" 0 "FAIL  cannot run: $2"
  status=1
}

py=.venv/bin/python
# A kube test runs in seconds (the slowest, the cluster simulations, in under a minute); one that
# waits past this is stuck on an event that never comes: its stacks are printed and the tier fails.
KUBE_TEST_TIMEOUT=${KUBE_TEST_TIMEOUT:-300}
# At nine tenths of that bound, the stuck test's name and its event loops' tasks (tests/kube/conftest.py).
export KUBE_TASK_DUMP_SECONDS=$((KUBE_TEST_TIMEOUT * 9 / 10))
pytest=($py -m pytest -q -rs)

# The vm tier runs in two VMs at once, then one alone. Under TCG a guest's vCPU is one host
# thread, so one VM left the second core of this 2-core machine idle: the tier took 39 min on a
# usual day (2340 s at f69a5d9, 2026-12-07), and was cut at 4200 s on a day the machine ran
# about twice as slow. The files split by their measured durations (tests/vm --durations=0):
#   shard 1, in the first VM:  vrrp 467 s, host_store 391 s, kube_proxy_parity 106 s;
#   shard 2, in the second:    every file not listed here (995 s), so a new file is never left out;
#   shard 3, alone, after:     crash_points 247 s, bgp 110 s. Beside another VM both failed in
#     one run of two (227efe1): a BGP node's agent outlasted the 60 s its stop is given (cause not
#     known yet; the lab now collects its stacks), and its IPVS services, left in its namespace,
#     made /proc/net/ip_vs skip services of the crash test's agents (fixed at 74781d6, see
#     vsop.adapters.ipvs). Both passed in every run with the VM alone.
# Each VM has its own kernel, namespaces and /tmp: the shards share only the project directory
# (.cache/measurements.txt, appended to). kmock and hypothesis plugins cost ~6 s of start-up
# under emulation and the vm tier uses neither; the cache provider is off so that two runs never
# write .pytest_cache at once.
VM_SHARD_ONE=(tests/vm/test_vrrp.py tests/vm/test_host_store.py tests/vm/test_kube_proxy_parity.py)
VM_SHARD_ALONE=(tests/vm/test_crash_points.py tests/vm/test_bgp.py)
# Each VM's bound: on a usual day the first two took 875 s and 982 s side by side, the third 342 s
# (the tier 1363 s at c48c80a, 2026-12-07); 3000 s and 1500 s leave room for a day twice as slow
# and keep the whole of `make test` inside CI's 90 minutes.
VM_SHARD_TIMEOUT=${VM_SHARD_TIMEOUT:-3000}
VM_ALONE_TIMEOUT=${VM_ALONE_TIMEOUT:-1500}

vm_shard() {  # number timeout pytest-targets...: one VM, its log .cache/test-vm-N.log
  local number=$1 timeout=$2; shift 2
  vm/run --timeout "$timeout" -- "${pytest[@]}" "$@" -p no:kmock -p no:hypothesispytest -p no:cacheprovider > ".cache/test-vm-$number.log" 2>&1
}

run_vm_tier() {
  local start=$SECONDS file shard rc verdict ok=1 first second
  local -a ignore=() lines=() rcs=()
  for file in "${VM_SHARD_ONE[@]}" "${VM_SHARD_ALONE[@]}"; do
    [ -f "$file" ] || { precondition vm "$file (tests/run-tiers.sh VM_SHARD_ONE, VM_SHARD_ALONE) does not exist"; return; }
    ignore+=(--ignore "$file")
  done
  echo "=== tier vm: [1] ${VM_SHARD_ONE[*]} and [2] tests/vm ${ignore[*]} in two VMs at once, then [3] ${VM_SHARD_ALONE[*]} alone"
  vm_shard 1 "$VM_SHARD_TIMEOUT" "${VM_SHARD_ONE[@]}" & first=$!
  vm_shard 2 "$VM_SHARD_TIMEOUT" tests/vm "${ignore[@]}" & second=$!
  wait "$first"; rcs+=($?)
  wait "$second"; rcs+=($?)
  vm_shard 3 "$VM_ALONE_TIMEOUT" "${VM_SHARD_ALONE[@]}"; rcs+=($?)
  for shard in 1 2 3; do
    rc=${rcs[shard - 1]}
    echo "=== tier vm, shard $shard (exit $rc):"
    cat ".cache/test-vm-$shard.log"
    verdict=$(python3 tests/tier_verdict.py vm ".cache/test-vm-$shard.log" "$rc") || ok=0
    lines+=("[$shard] ${verdict#*  }")
  done
  cat .cache/test-vm-1.log .cache/test-vm-2.log .cache/test-vm-3.log > .cache/test-vm.log
  verdict="${lines[0]}; ${lines[1]}; ${lines[2]}"
  if [ "$ok" -eq 1 ]; then verdict="ok  $verdict"; else verdict="FAIL  $verdict"; status=1; fi
  record vm "$((SECONDS - start))" "$verdict"
}

for tier in "${tiers[@]}"; do
  case $tier in
    lint)  run_tier lint .venv/bin/lint-imports ;;
    unit)  run_tier unit "${pytest[@]}" tests/unit ;;
    netns)
      if [ "$(id -u)" -ne 0 ]; then precondition netns "needs root (network namespaces)"
      elif ! command -v keepalived >/dev/null && [ ! -x /usr/sbin/keepalived ]; then precondition netns "keepalived is not installed (make deps)"
      else run_tier netns "${pytest[@]}" tests/netns; fi ;;
    vm)
      if [ "$(id -u)" -ne 0 ]; then precondition vm "needs root (qemu, network namespaces in the guest)"
      else run_vm_tier; fi ;;
    kube)
      if [ ! -x .venv/bin/kubectl ]; then precondition kube "kubectl (kubectl kustomize) is not in .venv/bin: make venv installs it from the [test] extra"
      else run_tier kube "${pytest[@]}" --timeout "$KUBE_TEST_TIMEOUT" --timeout-method thread tests/kube; fi ;;
    crd)   run_tier crd "${pytest[@]}" tests/crd ;;
    # Builds the image (image/build.sh; its base and layers cached) and runs it here and in the VM.
    image)
      if [ "$(id -u)" -ne 0 ]; then precondition image "needs root (mmdebstrap, buildah's chroot isolation, mount namespaces)"
      elif ! command -v buildah >/dev/null || ! command -v mmdebstrap >/dev/null; then precondition image "buildah or mmdebstrap is not installed (make deps)"
      else run_tier image "${pytest[@]}" tests/image; fi ;;
    *) echo "unknown tier $tier"; exit 2 ;;
  esac
done

echo
echo "=== summary"
cat "$summary"
exit $status
