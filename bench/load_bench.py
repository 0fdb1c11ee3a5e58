"""Loading figures: N VirtualServices in one YAML file, loaded and validated.

Prints seconds and peak RSS for the loader (libyaml, hardened) side by side with the
pure-Python compose the loader used before (PyYAML's SafeLoader composing nodes, the
duplicate-key walk, then the same validation), each in a fresh process so peak RSS is
its own. Usage: .venv/bin/python bench/load_bench.py [COUNT ...] [--no-old]
(default: 10000 100000). Not a test: nothing here asserts a figure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DOC = """\
---
apiVersion: vsop.dev/v1alpha1
kind: VirtualService
metadata:
  name: web-{i}
  namespace: bench
spec:
  vip: 10.{a}.{b}.{c}
  ports:
    - name: http
      port: 80
      protocol: TCP
      targetPort: 8080
  scheduler: rr
  forwarding: masq
  backends:
    - {{address: 192.168.{b}.{c}, port: 8080, weight: 1}}
    - {{address: 172.16.{b}.{c}, port: 8080, weight: 2}}
  healthCheck: {{type: tcp, intervalSeconds: 3, timeoutSeconds: 2}}
"""


def write_file(count: int, path: Path) -> None:
    with path.open("w") as handle:
        for i in range(count):
            handle.write(DOC.format(i=i, a=1 + i // (254 * 254), b=(i // 254) % 254, c=1 + i % 254))


CHILD = r"""
import json, resource, sys, time
how, path = sys.argv[1], sys.argv[2]
cpu0 = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
start = time.perf_counter()
if how == "new":
    from vsop.api.manifests import load_paths
    count = len(load_paths([path]).services)
else:
    import yaml
    from vsop.api.model import parse_virtual_service
    sys.path.insert(0, sys.argv[3])
    from old_loader import _compose_documents, _duplicate_key
    text = open(path, encoding="utf-8").read()
    services = []  # kept, as the new loader keeps them: peak RSS compares like with like
    for node, data in _compose_documents(text):
        if data is None:
            continue
        assert _duplicate_key(node) is None
        services.append(parse_virtual_service(data))
    count = len(services)
seconds = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"count": count, "seconds": seconds, "cpu": usage.ru_utime + usage.ru_stime - cpu0, "peak_mb": usage.ru_maxrss / 1024}))
"""

OLD_COMMIT = "1fa0034"  # the last commit with the pure-Python loader


def old_loader(folder: Path) -> bool:
    root = Path(__file__).resolve().parent.parent
    try:
        text = subprocess.run(
            ["git", "-C", str(root), "show", f"{OLD_COMMIT}:operator/vsop/loader.py"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return False
    # The old loader's own imports, at the modules' current paths.
    for before, after in (("vsop.errors", "vsop.api.errors"), ("vsop.model", "vsop.api.model")):
        text = text.replace(f"from {before} import", f"from {after} import")
    (folder / "old_loader.py").write_text(text)
    return True


def run(how: str, path: Path, folder: Path) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", CHILD, how, str(path), str(folder)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the {how} loader failed:\n{done.stderr}")
    return json.loads(done.stdout)


def main(argv: list[str]) -> int:
    with_old = "--no-old" not in argv
    counts = [int(a) for a in argv if a.isdigit()] or [10_000, 100_000]
    import yaml

    print(f"libyaml: {yaml.__with_libyaml__}; cpus: {os.cpu_count()}; load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print("wall-clock s (CPU s of the process) and peak RSS; new = vsop.api.manifests.load_paths, old = the pure-Python loader")
    print(f"{'VirtualServices':>15} {'file MB':>8} {'new s':>14} {'new MB':>7} {'old s':>16} {'old MB':>7} {'speed-up':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        have_old = with_old and old_loader(folder)
        for count in counts:
            path = folder / f"vs-{count}.yaml"
            write_file(count, path)
            new = run("new", path, folder)
            assert new["count"] == count, new
            line = f"{count:>15,} {path.stat().st_size / 1e6:>8.1f} {new['seconds']:>6.2f} ({new['cpu']:>5.2f}) {new['peak_mb']:>7.0f}"
            if have_old:
                old = run("old", path, folder)
                line += f" {old['seconds']:>7.2f} ({old['cpu']:>6.2f}) {old['peak_mb']:>7.0f} {old['cpu'] / new['cpu']:>7.1f}x"
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
