"""What goes into the image: the build context as .dockerignore shapes it, and its content hash.

scripts/image_build.py keys its cache on content_key(): the Dockerfile, .dockerignore and every
file of the context, so the key changes exactly when `docker build` / `buildah build` would see
different input. The .dockerignore patterns follow Docker's rules (Go's filepath.Match plus `**`,
`!` exceptions, the last matching rule decides, a rule on a folder covers what is inside).
Standard library only.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

Rule = tuple[bool, re.Pattern[str], str]  # (excludes, regex, literal start of the pattern)


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus `**`) as a regex over slash paths."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            body = pattern[i + 1 : end]
            body = "^" + body[1:] if body.startswith(("!", "^")) else body
            out, i = out + "[" + body + "]", end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def ignore_rules(text: str) -> list[Rule]:
    """The rules of a .dockerignore, in order: the last one that matches a path decides."""
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        literal = re.split(r"[*?\[]", pattern, maxsplit=1)[0]
        rules.append((not negated, _pattern_regex(pattern), literal))
    return rules


def excluded(path: str, rules: list[Rule]) -> bool:
    """Whether the context leaves `path` out: a rule applies to a path or to any folder above it."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    verdict = False
    for excludes, regex, _ in rules:
        if any(regex.fullmatch(p) for p in prefixes):
            verdict = excludes
    return verdict


def _may_hold_exceptions(folder: str, rules: list[Rule]) -> bool:
    # Could a `!` rule bring back something inside an excluded folder? (By its literal start.)
    return any(
        not excludes and (lit.startswith(folder + "/") or folder.startswith(lit))
        for excludes, _, lit in rules
    )


def context_files(root: Path) -> list[str]:
    """The build context's files (slash paths relative to root), as .dockerignore shapes it."""
    ignore = root / ".dockerignore"
    rules = ignore_rules(ignore.read_text() if ignore.exists() else "")
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root).as_posix()
        prefix = "" if rel == "." else rel + "/"
        dirnames[:] = [
            d
            for d in sorted(dirnames)
            if not excluded(prefix + d, rules) or _may_hold_exceptions(prefix + d, rules)
        ]
        found += [prefix + f for f in filenames if not excluded(prefix + f, rules)]
    return sorted(found)


def content_key(root: Path, *extra: str) -> str:
    """sha256 (16 hex digits) of `extra`, the Dockerfile, .dockerignore and the context's files
    (name, executable bit, content; a symlink by its target)."""
    digest = hashlib.sha256()
    for part in extra:
        digest.update(part.encode() + b"\0")
    for name in ("Dockerfile", ".dockerignore", *context_files(root)):
        path = root / name
        digest.update(name.encode() + b"\0")
        if path.is_symlink():
            digest.update(b"link\0" + os.readlink(path).encode())
        elif path.exists():
            mode = b"x" if path.stat().st_mode & 0o111 else b"-"
            digest.update(mode + hashlib.sha256(path.read_bytes()).digest())
        digest.update(b"\0")
    return digest.hexdigest()[:16]
