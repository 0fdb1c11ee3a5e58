"""Loading VirtualServices from files, folders and streams of (multi-document) YAML or JSON.

Owns reading what the user named (files, folders, `-`, /dev/fd/N, FIFOs, /dev/null;
the same file named twice is read once), which documents are VirtualServices (other
API groups are skipped with a note; `v1/List` and `VirtualServiceList` are expanded),
the hardening of YAML (libyaml; aliases bounded, recursion and nesting refused;
numbers and booleans that YAML 1.1 and 1.2 read differently refused with advice;
duplicate keys, explicit tags and two merge keys in one mapping refused; bytes per
input and digits per number bounded), the fields a server sets that are ignored in what is
read, as kubectl apply's server ignores them (so `vsop get -o yaml` and `kubectl get -o yaml`
are valid input), and the mapping from a validation error back to the file and line it came from. Line numbers are looked up in the YAML nodes only when a message
needs one. Nothing is half-loaded: either every file validates or `InvalidInput`
lists every problem. Input with no VirtualService at all is returned empty (with its
`skipped` notes): the callers decide what that means.
Must not import: kopf, pyroute2, kubernetes, subprocess.
"""

from __future__ import annotations

import functools
import gc
import json
import os
import re
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import yaml

from vsop.api.errors import FieldError, InvalidInput, printable
from vsop.api.model import API_GROUP, KIND, VirtualService, cross_object_errors, parse_virtual_service, semantic_warnings

YAML_SUFFIXES = (".yaml", ".yml", ".json")
LIST_KIND = "List"
VS_LIST_KIND = KIND + "List"
# How many nodes aliases may add to a document beyond the ones written out. Merge keys
# (`<<: *defaults`) in a big file stay far below; a "billion laughs" bomb is far above.
MAX_ALIAS_EXPANSION = 1_000_000
MAX_DEPTH = 100  # far deeper than any VirtualService; libyaml itself stops at 1000
# Far beyond any real store (10,000 objects are about 5 MB): reading stops here, so `-f /dev/zero`
# is a clear refusal, not memory running out.
MAX_INPUT_BYTES = 64 * 1024 * 1024
# A number longer than this is no port, weight or timeout (Python refuses above 4,300 digits).
MAX_DIGITS = 30

try:
    _BaseLoader: type = yaml.CSafeLoader
    LIBYAML = True
except AttributeError:  # PyYAML built without libyaml: correct, about 10x slower
    _BaseLoader = yaml.SafeLoader
    LIBYAML = False
NO_LIBYAML = (
    "PyYAML was built without libyaml here: YAML is read by its pure-Python parser, about 10x slower "
    "(install libyaml, e.g. the libyaml-dev package, then reinstall PyYAML)"
)

# Fields a server sets and a client's copy of an object carries (`kubectl get -o yaml`, `vsop get
# -o yaml`): ignored in what is read, as the API server ignores them in what kubectl apply sends.
# `status` is the status subresource's (vsop get's status.store included); in metadata, what
# the API server owns. creationTimestamp stays: it decides which of two objects claiming a
# port is older, and a copy of cluster objects keeps the cluster's decision (README, Conflicts).
SERVER_FIELDS = ("status",)
SERVER_METADATA = (
    "managedFields", "resourceVersion", "uid", "generation", "selfLink",
    "deletionTimestamp", "deletionGracePeriodSeconds",
)

_DECIMAL = re.compile(r"[-+]?(0|[1-9][0-9]*)")
_FLOAT_SAFE = re.compile(r"[-+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?|[-+]?\.(inf|Inf|INF)|\.(nan|NaN|NAN)")


@dataclass(frozen=True)
class Source:
    file: str
    document: int  # 0-based index of the document in the file
    line: int | None = None  # where the object starts
    item: int | None = None  # index in a List's items

    def __str__(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file


@dataclass
class Loaded:
    services: list[VirtualService] = field(default_factory=list)
    sources: dict[str, Source] = field(default_factory=dict)  # "ns/name" -> where it was read
    skipped: list[str] = field(default_factory=list)  # human notes about documents not used
    warnings: list[str] = field(default_factory=list)  # used, but the user should know
    files: list[str] = field(default_factory=list)  # every file read, once


class _Refused(Exception):
    """A YAML value refused while constructing: the node says where."""

    def __init__(self, node: yaml.Node, reason: str):
        super().__init__(reason)
        self.node = node
        self.reason = reason
        self.document: yaml.Node | None = None  # the document it was found in, for the object and field

    def error(self, name: str) -> FieldError:
        obj, path = _locate(self.document, self.node) if self.document is not None else (None, "")
        return FieldError(file=name, line=self.node.start_mark.line + 1, obj=obj, path=path, reason=self.reason)


def _locate(document: yaml.Node, target: yaml.Node) -> tuple[str | None, str]:
    """The object (namespace/name) and field path of a node, found by walking the document."""
    stack: list[tuple[yaml.Node, list[Any]]] = [(document, [])]
    found: list[Any] | None = None
    while stack and found is None:
        node, path = stack.pop()
        if len(path) > MAX_DEPTH:
            continue
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
                if key_node is target or value_node is target:
                    found = path + [key]
                    break
                stack.append((value_node, path + [key]))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                if item is target:
                    found = path + [index]
                    break
                stack.append((item, path + [index]))
    if not found:
        return None, ""
    root = document
    if found[0] == "items" and len(found) > 1 and isinstance(found[1], int):  # inside a List
        root = _child(_child(document, "items"), found[1]) or document
        found = found[2:]
    meta = _child(root, "metadata")
    name = _child(meta, "name")
    namespace = _child(meta, "namespace")
    obj = None
    if isinstance(name, yaml.ScalarNode):
        obj = f"{namespace.value if isinstance(namespace, yaml.ScalarNode) and namespace.value else 'default'}/{name.value}"
    path = ""
    for part in found:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return obj, path


_STR = "tag:yaml.org,2002:str"
_MERGE = "tag:yaml.org,2002:merge"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_REFUSED_TAGS = {f"tag:yaml.org,2002:{name}" for name in ("binary", "set", "omap", "pairs")}
_RESOLVED: dict[tuple[str, bool], str] = {}  # plain scalar text -> tag: keys and values repeat across documents


class _Loader(_BaseLoader):  # type: ignore[misc, valid-type]
    """libyaml's safe loader, stricter: see the module docstring.

    `build` replaces PyYAML's generic constructor for speed (it is most of the loading
    time): one recursive function, bounded in depth, memoising only when aliases exist.
    """

    deferred: _Refused | None = None
    # The document's text when it holds a '!' (a tag may be written): tags are found by
    # looking at where a node starts, since the composer keeps no "explicit" flag.
    tagged_text: str | None = None

    def explicit_tag(self, node: yaml.Node) -> str | None:
        """The tag written before this node (`!!int "80"`, `&a !!str x`), or None."""
        text, index = self.tagged_text, node.start_mark.index
        if text is None:
            return None
        if text.startswith("&", index):  # an anchor may stand before the tag
            end = index
            while end < len(text) and not text[end].isspace():
                end += 1
            index = end
            while index < len(text) and text[index] in " \t":
                index += 1
        if not text.startswith("!", index):
            return None
        end = index
        while end < len(text) and not text[end].isspace() and text[end] not in ",]}":
            end += 1
        return text[index:end]

    def resolve(self, kind: Any, value: Any, implicit: Any) -> str:
        # Called by the composer for every node; PyYAML's version tries regular expressions
        # chosen by the first character. Text that no implicit type can match is decided here.
        if kind is yaml.ScalarNode:
            if not implicit[0]:
                return _STR  # quoted or block text
            if value and (value[0] not in self.yaml_implicit_resolvers or value.count(".") > 1):
                return _STR  # names, and addresses: no number, date or boolean has two dots
            key = (value, True)
            tag = _RESOLVED.get(key)
            if tag is None:
                tag = super().resolve(kind, value, implicit)
                if len(_RESOLVED) < 100_000:
                    _RESOLVED[key] = tag
            return tag
        if not self.yaml_path_resolvers:  # none is ever added: a mapping or list takes the default tag
            return _MAP if kind is yaml.MappingNode else _SEQ
        return super().resolve(kind, value, implicit)

    # The composer calls these two around every node to follow path resolvers, and PyYAML's
    # return at once when there are none (none is ever added): a C builtin that ignores its
    # arguments costs less than the Python call, 60 times a VirtualService.
    if not _BaseLoader.yaml_path_resolvers:
        descend_resolver = staticmethod(slice)  # (parent, index) -> a slice, dropped
        ascend_resolver = staticmethod(tuple)  # () -> (), dropped

    def build(self, node: yaml.Node, memo: dict[int, Any] | None, depth: int = 0) -> Any:
        if depth > MAX_DEPTH:
            raise _Refused(node, f"nested more than {MAX_DEPTH} levels deep")
        if memo is not None:
            known = memo.get(id(node), memo)
            if known is not memo:
                return known
        cls = node.__class__
        if self.tagged_text is not None:
            written = self.explicit_tag(node)
            if written is not None:
                # Even a tag naming a core type: `!!int "80"` and `!!str 80` make a value
                # kubectl and the API server read differently from what vsop would.
                self._defer(_Refused(node, f"the YAML tag {written} is not supported in vsop's documents; write plain values"))
        if cls is yaml.ScalarNode:
            tag = node.tag
            if tag == _STR:
                return node.value
            constructor = self.yaml_constructors.get(tag)
            try:
                value = constructor(self, node) if constructor is not None else _unknown_tag(self, tag, node)
            except _Refused as exc:
                self._defer(exc)
                value = node.value
        elif cls is yaml.MappingNode:
            if node.tag != _MAP:
                return self._tagged(node)
            value = {}
            merged: list[yaml.Node] = []
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE:
                    if merged:  # readers disagree on which of two `<<` wins (PyYAML: the last)
                        self._defer(_Refused(key_node, "two merge keys (<<) in one mapping; readers disagree on which wins: write one, with a list (<<: [*a, *b])"))
                    merged.append(value_node)
                    continue
                if key_node.__class__ is not yaml.ScalarNode:
                    self._defer(_Refused(key_node, "a mapping key must be a plain value (a name), not a list or mapping"))
                    continue
                if key_node.tag == _STR and self.tagged_text is None:
                    key = key_node.value
                else:
                    key = self.build(key_node, memo, depth + 1)
                    if not isinstance(key, str):  # Kubernetes keys are text
                        self._defer(_Refused(key_node, f"a key must be text: {key_node.value or 'an empty value'} is not; quote it"))
                if key in value:
                    self._defer(_Refused(key_node, f"duplicate key {key_node.value!r} (YAML keeps only the last one)"))
                    continue
                if value_node.__class__ is yaml.ScalarNode and value_node.tag == _STR and self.tagged_text is None:
                    value[key] = value_node.value  # the common case, without a call
                else:
                    value[key] = self.build(value_node, memo, depth + 1)
            if merged:
                value = self._merge(node, merged, value, memo, depth)
        elif cls is yaml.SequenceNode:
            if node.tag != _SEQ:
                return self._tagged(node)
            value = [self.build(item, memo, depth + 1) for item in node.value]
        else:  # pragma: no cover - the composer makes only these three
            raise _Refused(node, "not a YAML value")
        if memo is not None:
            memo[id(node)] = value
        return value

    def _tagged(self, node: yaml.Node) -> Any:
        constructor = self.yaml_constructors.get(node.tag)
        try:
            if constructor is not None and node.tag in _REFUSED_TAGS:
                return constructor(self, node)
            return _unknown_tag(self, node.tag, node)
        except _Refused as exc:
            self._defer(exc)
            return None

    def _defer(self, refused: _Refused) -> None:
        """Keep the first refusal of a document: it is reported only if the document is ours,
        so a folder of mixed manifests is not blocked by what another tool reads its own way."""
        if self.deferred is None:
            self.deferred = refused

    def _merge(self, node: yaml.Node, merged: list[yaml.Node], own: dict[Any, Any], memo: dict[int, Any] | None, depth: int) -> dict[Any, Any]:
        """`<<: *defaults` (or a list of them): their keys first, the mapping's own keys win."""
        result: dict[Any, Any] = {}
        for source in merged:
            sources = source.value if isinstance(source, yaml.SequenceNode) else [source]
            for item in sources:
                data = self.build(item, memo, depth + 1)
                if not isinstance(data, dict):
                    self._defer(_Refused(item, "a merge key (<<) must refer to a mapping"))
                    continue
                for key, value in data.items():
                    result.setdefault(key, value)
        result.update(own)
        return result

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else id(key_node)
                if key in seen:
                    raise _Refused(key_node, f"duplicate key {key!r} (YAML keeps only the last one)")
                seen.add(key)
        try:
            return super().construct_mapping(node, deep=deep)
        except yaml.constructor.ConstructorError as exc:
            raise _Refused(node, "a mapping key must be a plain value (a name), not a list or mapping") from exc


def _construct_int(loader: _Loader, node: yaml.ScalarNode) -> int:
    text = node.value
    if len(text) > MAX_DIGITS:
        raise _Refused(node, f"a number of {len(text)} digits is out of range (at most {MAX_DIGITS} digits)")
    if _DECIMAL.fullmatch(text) is None:
        raise _Refused(node, _ambiguous_number(text))
    return int(text)


def _construct_float(loader: _Loader, node: yaml.ScalarNode) -> float:
    text = node.value
    if len(text) > MAX_DIGITS:
        raise _Refused(node, f"a number of {len(text)} characters is out of range (at most {MAX_DIGITS})")
    if _FLOAT_SAFE.fullmatch(text) is None:
        raise _Refused(node, _ambiguous_number(text))
    return float(yaml.SafeLoader.construct_yaml_float(loader, node))


def _ambiguous_number(text: str) -> str:
    if ":" in text:
        what = "a base-60 number in YAML 1.1 (1:20 is 80) and text in YAML 1.2"
    elif text.lstrip("+-").startswith(("0b", "0B")):
        what = "a binary number in YAML 1.1 and text in YAML 1.2"
    elif text.lstrip("+-").startswith(("0x", "0X")):
        what = "a hexadecimal number"
    elif "_" in text:
        what = "a number with '_' separators in YAML 1.1 and text in YAML 1.2"
    else:
        what = "an octal number in YAML 1.1 (010 is 8) and 10 or text elsewhere"
    return f"{text} is {what}; YAML readers disagree on it: write the number in plain decimal, or quote it if it is text"


def _construct_bool(loader: _Loader, node: yaml.ScalarNode) -> bool:
    text = node.value
    if text.lower() not in ("true", "false"):
        raise _Refused(
            node, f"{text} is true/false in YAML 1.1 but text in YAML 1.2; write true or false, or quote it if it is text"
        )
    return text.lower() == "true"


def _construct_timestamp(loader: _Loader, node: yaml.ScalarNode) -> str:
    return str(node.value)  # Kubernetes keeps timestamps as text; so do we


def _refuse_tag(loader: _Loader, node: yaml.Node) -> Any:
    raise _Refused(node, f"the YAML tag {node.tag.replace('tag:yaml.org,2002:', '!!')} is not supported; write plain values")


def _unknown_tag(loader: _Loader, suffix: str, node: yaml.Node) -> Any:
    raise _Refused(node, f"the YAML tag {node.tag} is not supported; write plain values")


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_Loader.add_constructor("tag:yaml.org,2002:float", _construct_float)
_Loader.add_constructor("tag:yaml.org,2002:bool", _construct_bool)
_Loader.add_constructor("tag:yaml.org,2002:timestamp", _construct_timestamp)
for _tag in ("binary", "set", "omap", "pairs"):
    _Loader.add_constructor(f"tag:yaml.org,2002:{_tag}", _refuse_tag)
_Loader.add_multi_constructor("", _unknown_tag)
_Loader.add_multi_constructor("!", _unknown_tag)
_Loader.add_multi_constructor("tag:", _unknown_tag)


def _check_aliases(root: yaml.Node) -> _Refused | None:
    """Recursion, nesting and alias expansion of one document, counting each node once.

    Aliases make the node tree a graph: a walk that follows them (as validation does)
    costs the expanded size, which grows exponentially with nested aliases. This walk
    is iterative and memoised: linear in the nodes written out.
    """
    expanded: dict[int, int] = {}  # id(node) -> nodes below it, aliases expanded
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 1, False)]
    while stack:
        node, depth, done = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            children = _children(node)
            total = 1 + sum(expanded[id(child)] for child in children)
            expanded[key] = total
            if total > MAX_ALIAS_EXPANSION and len(expanded) * 2 < total:
                return _Refused(
                    node, f"too many YAML aliases: they expand this document to more than {MAX_ALIAS_EXPANSION:,} values"
                )
            continue
        if key in on_path:
            return _Refused(node, "a YAML alias refers to a value that contains it (recursive); YAML data must be a tree")
        if key in expanded:
            continue
        if depth > MAX_DEPTH:
            return _Refused(node, f"nested more than {MAX_DEPTH} levels deep")
        on_path.add(key)
        stack.append((node, depth, True))
        for child in _children(node):
            if id(child) in on_path:
                return _Refused(child, "a YAML alias refers to a value that contains it (recursive); YAML data must be a tree")
            if id(child) not in expanded:
                stack.append((child, depth + 1, False))
    return None


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


# ---------------------------------------------------------------------------------------
# Reading what the user named.


def decode(data: bytes, name: str) -> str:
    """UTF-8 text (a BOM is dropped); anything else is refused naming the line of the first bad byte."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise InvalidInput(
            [FieldError(file=name, line=line, reason=f"not UTF-8 text (byte 0x{data[exc.start]:02x}); save the file as UTF-8")]
        ) from None


def read_stdin() -> str:
    """Standard input for `-f -`, as UTF-8; a closed or unreadable stdin is invalid input."""
    stream = getattr(sys.stdin, "buffer", sys.stdin)
    try:
        data = _read_bounded(stream, "-") if stream is not None else None
    except (OSError, ValueError):
        data = None
    if data is None:
        raise InvalidInput([FieldError(file="-", reason="cannot read standard input: it is closed")])
    if isinstance(data, str):
        return data
    return decode(data, "-")


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, PermissionError):
        return "permission denied (check its permissions, or run as a user who may read it)"
    if isinstance(exc, FileNotFoundError):
        return "no such file or folder"
    return (exc.strerror or "cannot be read").lower()


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given (also /dev/fd/N, FIFOs, /dev/null); folders as their *.yaml/*.yml/*.json
    files, sorted, recursively, hidden ones left out; the same file named twice once."""
    files: list[Path] = []
    problems: list[FieldError] = []
    seen: set[tuple[int, int] | str] = set()

    def add(path: Path, st: os.stat_result | None) -> None:
        identity: tuple[int, int] | str = (st.st_dev, st.st_ino) if st is not None and stat.S_ISREG(st.st_mode) else str(path)
        if identity not in seen:
            seen.add(identity)
            files.append(path)

    for raw in paths:
        path = Path(raw)
        if str(raw) == "-":
            add(path, None)
            continue
        try:
            st = path.stat()
        except OSError as exc:
            problems.append(FieldError(file=str(raw), reason=_os_reason(exc)))
            continue
        if not stat.S_ISDIR(st.st_mode):
            add(path, st)
            continue
        walk_errors: list[OSError] = []
        found: list[tuple[Path, os.stat_result]] = []
        for folder, dirs, names in os.walk(path, onerror=walk_errors.append, followlinks=True):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in names:
                if name.startswith(".") or not name.lower().endswith(YAML_SUFFIXES):  # web.YAML too
                    continue
                candidate = Path(folder) / name
                try:
                    cst = candidate.stat()
                except OSError as exc:
                    problems.append(FieldError(file=str(candidate), reason=_os_reason(exc)))
                    continue
                if stat.S_ISREG(cst.st_mode):
                    found.append((candidate, cst))
        for exc in walk_errors:
            problems.append(FieldError(file=str(exc.filename or path), reason=f"cannot list the folder: {_os_reason(exc)}"))
        for candidate, cst in sorted(found, key=lambda item: item[0]):
            add(candidate, cst)
    if problems:
        raise InvalidInput(problems)
    return files


def _size(count: int) -> str:
    return f"{count // (1024 * 1024)} MiB" if count >= 1024 * 1024 else f"{count} bytes"


def _read_bounded(handle: Any, name: str) -> bytes:
    data = handle.read(MAX_INPUT_BYTES + 1)
    if data is not None and len(data) > MAX_INPUT_BYTES:
        raise InvalidInput([FieldError(file=name, reason=f"too large: more than {_size(MAX_INPUT_BYTES)}; split it into several files")])
    return data


def read_path(path: Path) -> str:
    try:
        with open(path, "rb") as handle:
            data = _read_bounded(handle, str(path))
    except IsADirectoryError:
        raise InvalidInput([FieldError(file=str(path), reason="is a folder")]) from None
    except OSError as exc:
        raise InvalidInput([FieldError(file=str(path), reason=f"cannot read: {_os_reason(exc)}")]) from None
    return decode(data, str(path))


def without_gc(function: Any) -> Any:
    """Loading allocates millions of small objects that all survive: the cyclic collector
    would rescan them again and again (quadratic in a big file) and find nothing to free."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        enabled = gc.isenabled()
        gc.disable()
        try:
            return function(*args, **kwargs)
        finally:
            if enabled:
                gc.enable()

    return wrapper


@without_gc
def load_paths(paths: Iterable[str | Path], *, stdin_text: str | None = None) -> Loaded:
    loaded = Loaded(warnings=[] if LIBYAML else [NO_LIBYAML])
    errors: list[FieldError] = []
    for path in expand_paths(paths):
        name = str(path)
        try:
            text = stdin_text if name == "-" and stdin_text is not None else (read_stdin() if name == "-" else read_path(path))
        except InvalidInput as exc:
            errors.extend(exc.errors)
            continue
        loaded.files.append(name)
        errors.extend(_load_text(text, name, loaded))
    if not errors:
        errors.extend(_cross_object(loaded))
    if errors:
        raise InvalidInput(errors)
    return loaded


@without_gc
def load_text(text: str, name: str = "<input>") -> Loaded:
    loaded = Loaded(files=[name], warnings=[] if LIBYAML else [NO_LIBYAML])
    errors = _load_text(text, name, loaded)
    if not errors:
        errors.extend(_cross_object(loaded))
    if errors:
        raise InvalidInput(errors)
    return loaded


def problem_errors(problems: Iterable[Any], loaded: Loaded | None, field: Any = None) -> list[FieldError]:
    """Problems found after loading (conflicts, refused VIPs), in the loader's voice: each with
    its object's file and line and, for a clash, the other object's too. `field(problem)`
    names the field, if any."""
    sources = loaded.sources if loaded is not None else {}
    errors: list[FieldError] = []
    for p in problems:
        message = p.message
        other = getattr(p, "other", "")
        if other and other in sources:
            message = message.replace(f"VirtualService {other}", f"VirtualService {other} ({sources[other]})", 1)
        where = sources.get(p.obj)
        errors.append(
            FieldError(
                file=where.file if where else None,
                line=where.line if where else None,
                obj=p.obj or None,
                path=field(p) if field is not None else "",
                reason=f"{p.reason}: {message}",
            )
        )
    return errors


def _cross_object(loaded: Loaded) -> list[FieldError]:
    errors: list[FieldError] = []
    for ref, path, reason in cross_object_errors(loaded.services):
        where = loaded.sources.get(ref)
        errors.append(FieldError(file=where.file if where else None, line=where.line if where else None, obj=ref, path=path, reason=reason))
    return errors


# ---------------------------------------------------------------------------------------
# Documents.


def _yaml_problem(exc: yaml.YAMLError, text: str) -> tuple[int | None, str]:
    mark = getattr(exc, "problem_mark", None)
    line = mark.line + 1 if mark is not None else None
    position = getattr(exc, "position", None)
    if line is None and isinstance(position, int):  # the reader's errors carry an offset, not a mark
        line = text.count("\n", 0, position) + 1
    problem = str(getattr(exc, "problem", None) or exc)
    if "maximum nesting depth" in problem:
        return line, "nested too deeply (libyaml stops at 1000 levels)"
    if line is not None:
        lines = text.splitlines()
        source = lines[line - 1] if line - 1 < len(lines) else ""
        if "\t" in source[: len(source) - len(source.lstrip())] or "'\\t'" in problem or "\\t" in problem:
            return line, "a tab is not allowed here: YAML is indented with spaces only"
    match = re.search(r"#x([0-9a-fA-F]+)", problem)
    if match:
        code = int(match.group(1), 16)
        return line, f"the character U+{code:04X} is not allowed in YAML (a control character or a broken encoding)"
    if "undefined alias" in problem:
        return line, "an alias (*name) refers to no anchor (&name) defined before it"
    return line, problem.replace("<unicode string>", "the file")


def _documents(text: str, name: str) -> Iterator[tuple[Any, yaml.Node | None, int | None]]:
    """(data, node, line) per document; raises _Refused or yaml.YAMLError."""
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        # JSON is read as JSON (tabs and all); YAML nodes are composed only for a message's line.
        try:
            data = json.loads(text, object_pairs_hook=_json_object, parse_int=_json_int)
        except _DuplicateJSONKey:
            pass  # YAML says where
        except _JSONNumber as exc:
            raise _JSONProblem(1, f"a number of {exc.digits} digits is out of range (at most {MAX_DIGITS} digits)") from None
        except json.JSONDecodeError as exc:
            if _looks_like_json(stripped):
                raise _JSONProblem(exc.lineno, f"not valid JSON: {exc.msg.lower()} (column {exc.colno})") from None
            # else YAML in flow style: {name: web}
        else:
            yield data, None, text.count("\n", 0, len(text) - len(stripped)) + 1
            return
        text = text.replace("\t", " ") if _looks_like_json(stripped) else text
    aliases = "*" in text
    loader = _Loader(text)
    if "!" in text:
        loader.tagged_text = text
    try:
        while loader.check_node():
            node = loader.get_node()
            if aliases:
                refused = _check_aliases(node)
                if refused is not None:
                    raise refused
            loader.deferred = None
            try:
                data = loader.build(node, {} if aliases else None)
            except _Refused as exc:
                exc.document = node
                raise
            if loader.deferred is not None and _ours(data):
                loader.deferred.document = node
                raise loader.deferred
            yield data, node, node.start_mark.line + 1
    finally:
        loader.dispose()


def _ours(data: Any) -> bool:
    """A document vsop reads (its group, or a List that may hold ours)."""
    if not isinstance(data, dict):
        return False
    api_version, kind = _kind_of(data)
    return api_version.startswith(API_GROUP + "/") or kind in (KIND, LIST_KIND, VS_LIST_KIND)


class _DuplicateJSONKey(Exception):
    pass


class _JSONProblem(Exception):
    def __init__(self, line: int, reason: str):
        super().__init__(reason)
        self.line = line
        self.reason = reason


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise _DuplicateJSONKey()
    return result


def _json_int(text: str) -> int:
    if len(text) > MAX_DIGITS:
        raise _JSONNumber(len(text))
    return int(text)


class _JSONNumber(Exception):
    def __init__(self, digits: int):
        super().__init__(digits)
        self.digits = digits


def _looks_like_json(text: str) -> bool:
    """JSON, not YAML's flow style: the first key is double-quoted (`{"apiVersion": ...`)."""
    return re.match(r'[\[\s]*\{\s*"', text) is not None


def _json_node(text: str, document: int) -> yaml.Node | None:
    """The YAML nodes of a JSON text, for line numbers only (JSON's tabs are YAML's spaces)."""
    try:
        loader = _Loader(text.replace("\t", " "))
        try:
            index = 0
            while loader.check_node():
                node = loader.get_node()
                if index == document:
                    return node
                index += 1
        finally:
            loader.dispose()
    except yaml.YAMLError:
        return None
    return None


def _load_text(text: str, name: str, loaded: Loaded) -> list[FieldError]:
    errors: list[FieldError] = []
    index = -1
    try:
        for index, (data, node, line) in enumerate(_documents(text, name)):
            if data is None:
                continue  # an empty document, e.g. a trailing '---'
            errors.extend(_document(data, node, line, name, index, text, loaded))
    except _Refused as exc:
        errors.append(exc.error(name))
    except _JSONProblem as exc:
        errors.append(FieldError(file=name, line=exc.line, reason=exc.reason))
    except yaml.YAMLError as exc:
        line, reason = _yaml_problem(exc, text)
        errors.append(FieldError(file=name, line=line, reason=f"not valid YAML: {reason}"))
    except RecursionError:  # only the pure-Python fallback recurses; libyaml stops at 1000 levels
        errors.append(FieldError(file=name, reason="nested too deeply"))
    return errors


def _kind_of(data: dict[str, Any]) -> tuple[str, str]:
    api_version = data.get("apiVersion")
    kind = data.get("kind")
    return (api_version if isinstance(api_version, str) else "", kind if isinstance(kind, str) else "")


def _document(
    data: Any, node: yaml.Node | None, line: int | None, name: str, index: int, text: str, loaded: Loaded
) -> list[FieldError]:
    if not isinstance(data, dict):
        return [FieldError(file=name, line=line, reason="a document must be a mapping (key: value lines), not a list or a single value")]
    api_version, kind = _kind_of(data)
    group = api_version.rpartition("/")[0] if "/" in api_version else ""
    if api_version == "v1" and kind == LIST_KIND or group == API_GROUP and kind == VS_LIST_KIND:
        items = data.get("items")
        if items is None:
            return []
        if not isinstance(items, list):
            return [FieldError(file=name, line=_line_of(node, ("items",)) or line, path="items", reason=f"a {kind}'s items must be a list")]
        errors: list[FieldError] = []
        items_node = _child(node, "items")
        for position, item in enumerate(items):
            item_node = _child(items_node, position)
            item_line = item_node.start_mark.line + 1 if item_node is not None else line
            if not isinstance(item, dict):
                errors.append(FieldError(file=name, line=item_line, path=f"items[{position}]", reason="must be a mapping (an object)"))
                continue
            errors.extend(_object(item, item_node, item_line, name, index, position, text, loaded, inside=kind))
        return errors
    return _object(data, node, line, name, index, None, text, loaded)


def _object(
    data: dict[str, Any],
    node: yaml.Node | None,
    line: int | None,
    name: str,
    index: int,
    item: int | None,
    text: str,
    loaded: Loaded,
    inside: str | None = None,
) -> list[FieldError]:
    api_version, kind = _kind_of(data)
    group = api_version.rpartition("/")[0] if "/" in api_version else ""
    if group != API_GROUP and not (kind == KIND and not api_version):
        meta = data.get("metadata") if isinstance(data.get("metadata"), dict) else {}
        # The existing note names the kind; the API group only where the kind is ours too (Istio's VirtualService).
        what = (f"{api_version} {kind}" if kind == KIND else kind) or "a document without kind"
        obj_name = meta.get("name") if isinstance(meta.get("name"), str) else ""
        # Another tool's document: its kind and name are echoed cut and escaped, whatever they hold.
        loaded.skipped.append(f"{name}:{line}: skipped {printable(what)} {printable(obj_name)}".rstrip())
        return []
    if kind != KIND:
        where = _line_of(node, ("kind",)) or line
        shown = repr(kind) if kind else "nothing"
        return [FieldError(file=name, line=where, path="kind", reason=f"must be {KIND} (or {VS_LIST_KIND}) in {API_GROUP}, got {shown}")]
    try:
        vs = parse_virtual_service(without_server_fields(data))
    except InvalidInput as exc:
        if node is None and exc.errors:  # JSON: compose YAML nodes now, for the lines
            node = _json_node(text, index)
            if node is not None and item is not None:
                node = _child(_child(node, "items"), item)
        return [e.at(file=name, line=_line_of(node, e.loc or tuple(_split_path(e.path))) or line) for e in exc.errors]
    ref = vs.ref  # made on each use
    first = loaded.sources.get(ref)
    if first is not None:
        return [
            FieldError(
                file=name,
                line=line,
                obj=ref,
                path="metadata.name",
                reason=f"defined twice: also at {first}; names are unique per namespace",
            )
        ]
    source = Source(name, index, line, item)
    loaded.services.append(vs)
    loaded.sources[ref] = source
    for path, reason in semantic_warnings(vs.spec):
        loaded.warnings.append(str(FieldError(file=name, line=_line_of(node, tuple(_split_path(path))) or line, obj=ref, path=path, reason=reason)))
    return []


def without_server_fields(data: dict[str, Any]) -> dict[str, Any]:
    """The object without the fields a server sets (SERVER_FIELDS, SERVER_METADATA); the same
    dict when it holds none of them."""
    meta = data.get("metadata")
    strip_meta = isinstance(meta, dict) and any(key in meta for key in SERVER_METADATA)
    if not strip_meta and not any(key in data for key in SERVER_FIELDS):
        return data
    data = {key: value for key, value in data.items() if key not in SERVER_FIELDS}
    if strip_meta:
        data["metadata"] = {key: value for key, value in meta.items() if key not in SERVER_METADATA}  # type: ignore[union-attr]
    return data


def _child(node: yaml.Node | None, part: Any) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode) and isinstance(part, str):
        return next((v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == part), None)
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
        return node.value[part]
    return None


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """Follow a field location through the YAML nodes; the deepest node found wins."""
    if node is None:
        return None
    current = node
    line = current.start_mark.line + 1
    for part in loc:
        if isinstance(current, yaml.MappingNode) and isinstance(part, str):
            match = next(((k, v) for k, v in current.value if isinstance(k, yaml.ScalarNode) and k.value == part), None)
            if match is None:
                continue  # pydantic's branch labels are not keys; skip them
            key_node, current = match
            line = key_node.start_mark.line + 1
        elif isinstance(current, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(current.value):
                break
            current = current.value[part]
            line = current.start_mark.line + 1
    return line


def _split_path(path: str) -> list[Any]:
    parts: list[Any] = []
    for chunk in path.replace("]", "").split("."):
        name, *indexes = chunk.split("[")
        if name:
            parts.append(name)
        parts.extend(int(i) for i in indexes if i.isdigit())
    return parts

