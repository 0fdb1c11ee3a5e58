"""Loading VirtualServices from files and folders of (multi-document) YAML.

Owns the mapping from a validation error back to the file and line it came from.
Every document is accounted for: VirtualServices are returned, other kinds are
reported as skipped, and anything malformed is an error. Nothing is half-loaded:
either every file validates or `InvalidInput` lists every problem.
Must not import: kopf, pyroute2, kubernetes, subprocess.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

from vsop.errors import FieldError, InvalidInput
from vsop.model import API_GROUP, KIND, VirtualService, parse_virtual_service

YAML_SUFFIXES = (".yaml", ".yml", ".json")


@dataclass(frozen=True)
class Source:
    file: str
    document: int  # 0-based index of the document in the file


@dataclass
class Loaded:
    services: list[VirtualService] = field(default_factory=list)
    sources: dict[str, Source] = field(default_factory=dict)  # "ns/name" -> where it was read
    skipped: list[str] = field(default_factory=list)  # human notes about documents not used


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given; folders as their *.yaml/*.yml/*.json files, sorted, recursively."""
    files: list[Path] = []
    problems: list[FieldError] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in YAML_SUFFIXES)
            files.extend(p for p in found if not any(part.startswith(".") for part in p.relative_to(path).parts))
        elif path.is_file() or str(raw) == "-":
            files.append(path)
        else:
            problems.append(FieldError(file=str(raw), reason="no such file or folder"))
    if problems:
        raise InvalidInput(problems)
    return files


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
        data = stream.read() if stream is not None else None
    except (OSError, ValueError):
        data = None
    if data is None:
        raise InvalidInput([FieldError(file="-", reason="cannot read standard input: it is closed")])
    if isinstance(data, str):
        return data
    return decode(data, "-")


def load_paths(paths: Iterable[str | Path], *, stdin_text: str | None = None) -> Loaded:
    loaded = Loaded()
    errors: list[FieldError] = []
    for path in expand_paths(paths):
        name = str(path)
        try:
            text = stdin_text if name == "-" and stdin_text is not None else path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            errors.append(FieldError(file=name, reason=f"cannot read: {exc}"))
            continue
        errors.extend(_load_text(text, name, loaded))
    if errors:
        raise InvalidInput(errors)
    return loaded


def load_text(text: str, name: str = "<input>") -> Loaded:
    loaded = Loaded()
    errors = _load_text(text, name, loaded)
    if errors:
        raise InvalidInput(errors)
    return loaded


def _load_text(text: str, name: str, loaded: Loaded) -> list[FieldError]:
    errors: list[FieldError] = []
    try:
        documents = list(_compose_documents(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        return [FieldError(file=name, line=line, reason=f"not valid YAML: {problem}")]
    for index, (node, data) in enumerate(documents):
        if data is None:
            continue  # an empty document, e.g. a trailing '---'
        line = node.start_mark.line + 1
        duplicate = _duplicate_key(node)
        if duplicate is not None:
            key, dup_line = duplicate
            errors.append(FieldError(file=name, line=dup_line, reason=f"duplicate key {key!r} (YAML keeps only the last one)"))
            continue
        if not isinstance(data, dict):
            errors.append(FieldError(file=name, line=line, reason="a document must be a mapping (an object)"))
            continue
        kind, api_version = data.get("kind"), data.get("apiVersion")
        if kind != KIND:
            if isinstance(api_version, str) and api_version.startswith(API_GROUP + "/"):
                errors.append(FieldError(file=name, line=line, path="kind", reason=f"must be {KIND}, got {kind!r}"))
            else:
                meta = data.get("metadata") if isinstance(data.get("metadata"), dict) else {}
                loaded.skipped.append(f"{name}:{line}: skipped {kind or 'a document without kind'} {meta.get('name', '')}".rstrip())
            continue
        try:
            vs = parse_virtual_service(data)
        except InvalidInput as exc:
            errors.extend(e.at(file=name, line=_line_of(node, e.loc, e.path) or line) for e in exc.errors)
            continue
        if vs.ref in loaded.sources:
            first = loaded.sources[vs.ref]
            errors.append(
                FieldError(file=name, line=line, obj=vs.ref, path="metadata.name", reason=f"defined twice (first in {first.file})")
            )
            continue
        loaded.services.append(vs)
        loaded.sources[vs.ref] = Source(name, index)
    return errors


def _compose_documents(text: str) -> Iterable[tuple[yaml.Node, Any]]:
    loader = yaml.SafeLoader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            yield node, loader.construct_document(node)
    finally:
        loader.dispose()


def _duplicate_key(node: yaml.Node) -> tuple[str, int] | None:
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            key = key_node.value
            if key in seen:
                return str(key), key_node.start_mark.line + 1
            seen.add(key)
            found = _duplicate_key(value_node)
            if found:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            found = _duplicate_key(item)
            if found:
                return found
    return None


def _line_of(node: yaml.Node, loc: tuple[Any, ...], path: str) -> int | None:
    """Follow a field location through the YAML nodes; the deepest node found wins."""
    parts: list[Any] = list(loc) if loc else _split_path(path)
    current = node
    line = current.start_mark.line + 1
    for part in parts:
        if isinstance(current, yaml.MappingNode) and isinstance(part, str):
            match = next(((k, v) for k, v in current.value if k.value == part), None)
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
        parts.extend(int(i) for i in indexes)
    return parts
