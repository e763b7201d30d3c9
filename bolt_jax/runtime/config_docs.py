"""Documentation of config keys, read from the source that defines them: the comment on a key's line, or the
comment lines directly above it. One home for a key's doc (its `default_<section>_config()`), read by
`python -m bolt_jax.main --describe` and by the command-line help of `python -m bolt_jax.data.prepare`."""

from __future__ import annotations

import ast
import collections
import io
import re
import textwrap
import tokenize


def _comments(source: str) -> tuple[dict[int, str], dict[int, str]]:
    """Line -> comment text, for comments after code (`trailing`) and for comment-only lines (`own_line`)."""
    trailing: dict[int, str] = {}
    own_line: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            text = tok.string.lstrip("#").strip()
            (own_line if tok.line.strip().startswith("#") else trailing)[tok.start[0]] = text
    return trailing, own_line


def _target_name(target: ast.expr, in_class: bool) -> str | None:
    """`c.train.steps` -> "train.steps", `c["x"]` -> "x", a class field `x: int` -> "x"; None for a local."""
    parts: list[str] = []
    while True:
        if isinstance(target, ast.Attribute):
            parts.insert(0, target.attr)
            target = target.value
        elif isinstance(target, ast.Subscript) and isinstance(target.slice, ast.Constant):
            parts.insert(0, str(target.slice.value))
            target = target.value
        elif isinstance(target, ast.Name):
            return ".".join(parts) if parts else (target.id if in_class else None)
        else:
            return None


def _key_lines(tree: ast.AST) -> dict[str, int]:
    """Each key a function or class defines (dict literals, `ConfigDict({...})`, attribute assignments, dataclass
    fields), dotted relative to what it builds, with the line that names it."""
    out: dict[str, int] = {}

    def visit(value: ast.expr | None, prefix: str) -> None:
        if isinstance(value, ast.Call) and value.args:
            value = value.args[0]
        if isinstance(value, ast.Dict):
            for k, v in zip(value.keys, value.values):
                if isinstance(k, ast.Constant) and isinstance(k.value, str):
                    out.setdefault(prefix + k.value, k.lineno)
                    visit(v, f"{prefix}{k.value}.")

    classes = {id(n) for c in ast.walk(tree) if isinstance(c, ast.ClassDef) for n in c.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Return):
            visit(node.value, "")
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, ast.AnnAssign) else []
        for target in targets:
            name = _target_name(target, id(node) in classes)
            if name:
                out.setdefault(name, node.lineno)
                visit(node.value, name + ".")
    return out


def key_docs(source: str, prefix: str = "") -> dict[str, str]:
    """`prefix + key` -> its documentation in `source`: the comment on the key's line, else the comment lines
    directly above it (joined into one line); "" when there is none. Where one line names several keys (a one-line
    dict), a comment documents only the keys it mentions by name."""
    source = textwrap.dedent(source)
    trailing, own_line = _comments(source)
    lines = _key_lines(ast.parse(source))
    per_line = collections.Counter(lines.values())
    docs: dict[str, str] = {}
    for key, line in lines.items():
        above, at = [], line - 1
        while at in own_line:
            above.insert(0, own_line[at])
            at -= 1
        doc = trailing.get(line) or " ".join(above)
        leaf = key.rsplit(".", 1)[-1]
        shared = per_line[line] > 1 and not re.search(rf"\b{re.escape(leaf)}\b", doc)
        docs[prefix + key] = "" if shared else doc
    return docs
