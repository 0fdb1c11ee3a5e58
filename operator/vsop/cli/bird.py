"""`vsop render bird`: print or write bird.conf for a BGPSpeaker (announce: bgp).

Owns the command's arguments (its own parser: `vsop render bird ...` arrives here before the
main parser sees it), reading the speaker and the VirtualServices whose announcement options
go into the file, and the Result of vsop.bgp's render and writer. With --out the candidate is
checked with `bird -p`, renamed into place and BIRD reconfigured through --control-socket.
Must not import: vsop.cli.main, vsop.kube, vsop.adapters.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Sequence

from vsop.api.errors import FieldError, InvalidInput
from vsop.api.manifests import load_paths, read_path
from vsop.cli import output
from vsop.cli.common import FORMATS, say
from vsop.cli.output import Result, exits

DESCRIPTION = """\
Print (or with --out, write) BIRD 2's configuration for a BGPSpeaker: kernel protocols that
learn the blackhole routes vsop keeps in its table (4242) for the VIPs this node should
attract, export filters that pass only those /32 and /128 routes (with each VIP's bgp
communities and localPreference from the VirtualServices given with -f), and one BGP session
per peer, with BFD where asked. Only values from validated fields reach the file.

With --out FILE the candidate is checked with `bird -p -c`, renamed over FILE (never over a
file vsop did not write) and BIRD is told with `birdc -s SOCKET configure`; a candidate BIRD
refuses changes nothing and its message is printed (exit 1).
"""

EXIT_CODES = exits(
    ok="rendered (or written and BIRD told)",
    failure="runtime failure: BIRD refused the candidate, or FILE cannot be written (nothing was changed)",
    invalid="invalid input: nothing was rendered",
)


def build_parser() -> argparse.ArgumentParser:
    parser = output.Parser(prog="vsop render bird", description=DESCRIPTION, epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--speaker", required=True, metavar="FILE", help="a YAML file holding one BGPSpeaker")
    parser.add_argument(
        "-f", "--filename", dest="paths", action="append", default=[], metavar="PATH",
        help="VirtualServices whose announce: bgp options (communities, localPreference) go into the export filters; repeatable",
    )
    parser.add_argument("--route-table", type=int, default=4242, metavar="N", help="the kernel table vsop's routes are in (default 4242)")
    parser.add_argument("--out", metavar="FILE", help="write FILE (checked, renamed into place) and reconfigure BIRD")
    parser.add_argument("--control-socket", default="/run/vsop/bird.ctl", metavar="SOCKET", help="BIRD's control socket (default /run/vsop/bird.ctl)")
    parser.add_argument("--log", choices=("syslog", "stderr"), default="syslog",
                        help="where BIRD logs: syslog (default) or stderr (BIRD in a container, run with -f)")
    parser.add_argument("--bird", default="bird", metavar="PATH", help="the bird used for `bird -p` (default: bird on PATH)")
    parser.add_argument("--birdc", default="birdc", metavar="PATH", help="the birdc used for `configure` (default: birdc on PATH)")
    parser.add_argument("-o", "--output", choices=FORMATS, default="text", help="text: the configuration or what was done; json, yaml: one object")
    parser.add_argument("-v", "--verbose", action="store_true", help="on an unexpected failure, the full trace")
    return parser


def main(argv: Sequence[str]) -> int:
    """`vsop render bird ARGS`. 0 done, 1 BIRD refused it or cannot write, 2 invalid input."""
    return output.run_own_parser(build_parser, run, argv, nothing="nothing was rendered")


def _speaker(path: str):  # type: ignore[no-untyped-def]
    import yaml

    from vsop.api.speaker import SPEAKER_KIND, parse_bgp_speaker

    text = read_path(Path(path))
    try:
        documents = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as exc:
        raise InvalidInput([FieldError(file=path, reason=f"not YAML: {str(exc).splitlines()[0]}")]) from None
    speakers = [doc for doc in documents if isinstance(doc, dict) and doc.get("kind") == SPEAKER_KIND]
    if len(speakers) != 1:
        raise InvalidInput([FieldError(file=path, reason=f"holds {len(speakers)} BGPSpeakers; give exactly one")])
    try:
        return parse_bgp_speaker(speakers[0])
    except InvalidInput as exc:
        raise InvalidInput([dataclasses.replace(error, file=path) for error in exc.errors]) from None


def run(args: argparse.Namespace) -> Result:
    from vsop.bgp.render import render_bird
    from vsop.bgp.writer import BirdWriter
    from vsop.core.state import Names

    if not 1 <= args.route_table <= 0xFFFFFFFF or args.route_table in (253, 254, 255):
        raise InvalidInput([FieldError(path="--route-table", reason=f"{args.route_table} is not a table vsop may own (1-4294967295, not default/main/local)")])
    speaker = _speaker(args.speaker)
    services = load_paths(args.paths).services if args.paths else []
    text = render_bird(speaker, services, names=Names(route_table=args.route_table), log=args.log)
    if not args.out:
        return Result(text=text, document={"speaker": speaker.name, "config": text})
    writer = BirdWriter(args.out, args.control_socket, bird=args.bird, birdc=args.birdc)
    try:
        result = writer.update(text)
    except OSError as exc:
        return output.failed(f"cannot write {args.out}: {exc.strerror or exc}; nothing was changed")
    document = {"out": args.out, "changed": result.changed, "reloaded": result.reloaded, "refused": result.refused, "reloadError": result.reload_error}
    if result.refused:
        return output.failed(f"{args.out} not changed: {result.refused}", **document)
    if not result.changed:
        return Result(text=f"vsop: {args.out} is up to date\n", document=document)
    if result.reload_error:
        say(f"BIRD was not reconfigured ({result.reload_error}); it reads {args.out} when it starts")
    done = "and BIRD reconfigured" if result.reloaded else "(BIRD not reconfigured)"
    return Result(text=f"vsop: wrote {args.out} {done}\n", document=document)
