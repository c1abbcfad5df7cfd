#!/usr/bin/env python3
"""Wrap every line of the project's Python files that is longer than 100 characters.

    python .ci/wrap100.py [--check] [paths...]

Default paths: the tracked ``*.py`` files under ``refvae/``, ``tests/`` and ``validation/`` of the
current git checkout. Only lines longer than the limit are changed (plus, for comments and
docstrings, the following lines of the same paragraph that receive the overflow words); every
other line stays byte-identical. Deterministic and idempotent (a second run changes nothing).

Kinds of long lines handled:

- code: broken after a comma or before an operator inside brackets, continuation aligned with the
  opening bracket (the codebase's style); a hanging indent after an opening bracket only where the
  aligned layout cannot fit; long string literals (f-strings too, never inside ``{...}``) split
  into adjacent literals, in parentheses where they are not already inside brackets;
- a trailing comment on a long line: moved to its own line above (the statement, or the physical
  line when that line is a continuation inside brackets);
- comment lines and docstring lines: re-wrapped; the overflow words go to the start of the next
  line of the same paragraph (never into list items, table rows, literal blocks or reST roles).

Left alone (and listed): the lines that contain a snippet which ``validation/mutations.py`` looks
up by exact text, other multi-line strings, code blocks inside docstrings, and lines no layout
fits. Safety: after rewriting a file its AST must equal the original's (docstrings compared with
whitespace normalised; implicit concatenation is folded by the parser), it must compile, and every
mutation snippet must occur as often as before; otherwise the file is left unchanged and reported.
``--check``: change nothing, exit 1 if any file would change.
"""
from __future__ import annotations

import argparse
import ast
import io
import re
import subprocess
import sys
import tokenize
from pathlib import Path

LIMIT = 100
ROOTS = ("refvae", "tests", "validation")
MUTATIONS = "validation/mutations.py"
PRAGMA = re.compile(r"#\s*(noqa|type:|pragma|fmt:|pylint:|nosec|isort:|ruff:|mypy:)|^#!|coding[:=]")
MARKER = re.compile(r"([-*+•|]|>>>|\.\.|\d+[.)]|[a-zA-Z][.)]|\(\w+\)|:\w+.*:|#)(\s|$)")
OPS = {"and", "or", "if", "else", "for", "+", "-", "*", "/", "//", "%", "@", "|", "&", "==", "!=",
       "<=", ">=", "<", ">", "in", "is", "not"}
KEYWORDS = {"and", "or", "not", "in", "is", "if", "else", "for", "return", "lambda", "yield",
            "await", "assert", "del", "raise", "from", "import", "while", "elif", "with", "as",
            "print", "None"}
STRPREFIX = re.compile(r"^([rRbBuUfF]*)('''|\"\"\"|'|\")")


def width(s: str) -> int:
    """The width the limit applies to: UTF-8 bytes, as byte-counting tools (mawk's ``length``)
    measure a line, so that a line within it is within 100 characters too."""
    return len(s.encode("utf-8"))


# ---------------------------------------------------------------- tokens


class Tok:
    __slots__ = ("type", "string", "start", "end")

    def __init__(self, type_, string, start, end):
        self.type, self.string, self.start, self.end = type_, string, start, end


def tokens(text: str) -> list[Tok]:
    """Tokens, with 3.12+ f-strings merged back into one STRING token."""
    out, depth, fstart = [], 0, None
    fs_start = getattr(tokenize, "FSTRING_START", None)
    fs_end = getattr(tokenize, "FSTRING_END", None)
    lines = text.splitlines(keepends=True)
    for t in tokenize.generate_tokens(io.StringIO(text).readline):
        if fs_start is not None and t.type == fs_start:
            if depth == 0:
                fstart = t.start
            depth += 1
            continue
        if depth:
            if t.type == fs_end:
                depth -= 1
                if depth == 0:
                    s = _slice(lines, fstart, t.end)
                    out.append(Tok(tokenize.STRING, s, fstart, t.end))
            continue
        out.append(Tok(t.type, t.string, t.start, t.end))
    return out


def _slice(lines, start, end):
    (l1, c1), (l2, c2) = start, end
    if l1 == l2:
        return lines[l1 - 1][c1:c2]
    return lines[l1 - 1][c1:] + "".join(lines[l1:l2 - 1]) + lines[l2 - 1][:c2]


SKIP = {tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}


class Analysis:
    """Per-file facts: tokens per line, bracket stack before each token, statement starts."""

    def __init__(self, text: str):
        self.lines = text.splitlines(keepends=True)
        self.toks = tokens(text)
        self.online: dict[int, list[int]] = {}
        self.stack_before: list[tuple] = []      # open-bracket tokens' (line, col) before each token
        self.stmt_start: list[int] = []          # index of the first token of its logical line
        self.in_string: dict[int, int] = {}      # line -> index of a multi-line STRING covering it
        stack, first = [], None
        for i, t in enumerate(self.toks):
            self.stack_before.append(tuple(stack))
            if t.type in (tokenize.NEWLINE, tokenize.ENDMARKER):
                self.stmt_start.append(first if first is not None else i)
                first = None
                continue
            if first is None and t.type not in SKIP and t.type != tokenize.COMMENT:
                first = i
            self.stmt_start.append(first if first is not None else i)
            if t.type not in SKIP:
                self.online.setdefault(t.start[0], []).append(i)
            if t.type == tokenize.STRING and t.end[0] > t.start[0]:
                for ln in range(t.start[0], t.end[0] + 1):
                    self.in_string[ln] = i
            if t.type == tokenize.OP and t.string in "([{":
                stack.append(i)
            elif t.type == tokenize.OP and t.string in ")]}" and stack:
                stack.pop()

    def align_of(self, i: int) -> int:
        """Column where a continuation inside the open bracket token ``i`` aligns."""
        t = self.toks[i]
        j = i + 1
        while j < len(self.toks) and self.toks[j].type in (tokenize.NL, tokenize.COMMENT):
            j += 1
        if j < len(self.toks) and self.toks[j].start[0] > t.start[0]:
            return self.toks[j].start[1]              # hanging: the first item's column
        return t.end[1]


def docstring_lines(tree: ast.AST) -> set[int]:
    """Start lines of the docstrings' string tokens."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                out.add(body[0].value.lineno)
    return out


# ---------------------------------------------------------------- text wrapping (comments, docs)


def protected_spans(text: str) -> list[tuple[int, int]]:
    spans = []
    for m in re.finditer(r"``.+?``|:[\w:.-]+:`[^`]*`|`[^`]+`_{0,2}", text):
        spans.append((m.start(), m.end()))
    return spans


def split_points(text: str, start: int) -> list[int]:
    """Indices of spaces (after ``start``) where ``text`` may be broken."""
    spans = protected_spans(text)
    out = []
    for k in range(start, len(text)):
        if text[k] != " " or (k and text[k - 1] in " \\"):
            continue
        if any(a < k < b for a, b in spans):
            continue
        rest = text[k + 1:]
        if not rest.strip() or MARKER.match(rest.lstrip()) or rest.startswith(" "):
            continue
        out.append(k)
    return out


def wrap_text(prefix: str, body: str, cont: str) -> list[str] | None:
    """Break ``prefix + body`` into lines ≤ LIMIT; continuation lines start with ``cont``."""
    out, first = [], True
    while True:
        lead = prefix if first else cont
        line = lead + body
        if width(line) <= LIMIT:
            out.append(line)
            return out
        pts = [k for k in split_points(line, len(lead) + 1) if width(line[:k].rstrip()) <= LIMIT]
        if not pts:
            return None
        k = pts[-1]
        out.append(line[:k].rstrip())
        body = line[k + 1:]
        first = False


def cascade(lines: list[str], n: int, prefix: str, body: str, cont: str, follow) -> int | None:
    """Re-wrap line ``n`` (0-based, no newline chars in ``lines``); overflow words go to the
    following lines of the same paragraph (``follow(k)`` gives the text of line ``k`` after
    ``cont`` or None); extra lines are inserted. Returns the number of lines after, or None."""
    wrapped = wrap_text(prefix, body, cont)
    if wrapped is None:
        return None
    new = [wrapped[0]]
    carry = [w[len(cont):] for w in wrapped[1:]]
    k = n + 1
    while carry:
        nxt = follow(k) if k < len(lines) else None
        if nxt is None or len(carry) > 1:
            new.extend(cont + c for c in carry)
            carry = []
            break
        merged = wrap_text(cont, carry[0] + " " + nxt, cont)
        if merged is None:
            return None
        new.append(merged[0])
        carry = [w[len(cont):] for w in merged[1:]]
        k += 1
    lines[n:k] = new
    return len(new)


# ---------------------------------------------------------------- strings


def escape_spans(body: str, raw: bool) -> list[tuple[int, int]]:
    out, k = [], 0
    while k < len(body):
        if body[k] == "\\":
            if raw:
                m = 2
            else:
                c = body[k + 1:k + 2]
                if c == "x":
                    m = 4
                elif c == "u":
                    m = 6
                elif c == "U":
                    m = 10
                elif c == "N":
                    m = body.find("}", k) - k + 1 if "}" in body[k:] else 2
                elif c in "01234567":
                    m = 2
                    while m < 4 and body[k + m:k + m + 1] in tuple("01234567"):
                        m += 1
                else:
                    m = 2
            out.append((k, k + m))
            k += m
        else:
            k += 1
    return out


def string_split_points(tok: str) -> tuple[str, str, str, list[int], list[int]] | None:
    """``(prefix, quote, body, good, ok)``: split indices into ``body`` (after a space / anywhere
    legal) for a one-line, single-quoted string token; None when it cannot be split."""
    m = STRPREFIX.match(tok)
    if not m or len(m.group(2)) == 3 or "\n" in tok:
        return None
    prefix, quote = m.group(1), m.group(2)
    body = tok[len(prefix) + 1:-1]
    raw, fstr = "r" in prefix.lower(), "f" in prefix.lower()
    bad = set()
    for a, b in escape_spans(body, raw):
        bad.update(range(a + 1, b))
    if fstr:
        depth, k = 0, 0
        while k < len(body):
            c = body[k]
            if depth == 0 and body[k:k + 2] in ("{{", "}}"):
                bad.add(k + 1)
                k += 2
                continue
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
            if depth > 0 or c == "{":
                bad.add(k + 1)
            if depth > 0:
                bad.add(k)
            k += 1
        if depth:
            return None
    good = [k for k in range(1, len(body)) if k not in bad and body[k - 1] == " " and body[k] != " "]
    ok = [k for k in range(1, len(body)) if k not in bad]
    return prefix, quote, body, good, ok


def piece(prefix: str, quote: str, body: str) -> str:
    if "f" in prefix.lower() and "{" not in body and "}" not in body:
        prefix = prefix.replace("f", "").replace("F", "")
    return prefix + quote + body + quote


def split_string(tok: str, col: int, cont: int, suffix_room: int = 0) -> list[str] | None:
    """Pieces of the string token starting at output column ``col``; the continuation pieces
    start at column ``cont``. Each piece (plus quotes) fits within LIMIT."""
    sp = string_split_points(tok)
    if sp is None:
        return None
    prefix, quote, body, good, ok = sp
    pieces, pos, c = [], 0, col
    extra = len(prefix) + 2
    while True:
        room = LIMIT - c - extra
        if len(body) - pos + suffix_room <= room:
            pieces.append(piece(prefix, quote, body[pos:]))
            return pieces if len(pieces) > 1 else None
        cands = [k for k in good if pos < k <= pos + room and k - pos >= 8]
        if not cands:
            cands = [k for k in ok if pos < k <= pos + room and k - pos >= 8]
        if not cands or room < 12:
            return None
        k = cands[-1]
        pieces.append(piece(prefix, quote, body[pos:k]))
        pos, c = k, cont


# ---------------------------------------------------------------- code layout


class Item:
    __slots__ = ("sep", "text", "kind", "ttype")

    def __init__(self, sep, text, kind, ttype=None):
        self.sep, self.text, self.kind, self.ttype = sep, text, kind, ttype


def make_items(line: str, toks: list[Tok]) -> list[Item]:
    items, prev_end = [], None
    for t in toks:
        sep = "" if prev_end is None else line[prev_end:t.start[1]]
        if t.type == tokenize.OP and t.string in "([{":
            kind = "open"
        elif t.type == tokenize.OP and t.string in ")]}":
            kind = "close"
        elif t.type == tokenize.OP and t.string == ",":
            kind = "comma"
        elif t.type == tokenize.STRING:
            kind = "string"
        else:
            kind = "other"
        items.append(Item(sep, t.string, kind, t.type))
        prev_end = t.end[1]
    return items


def is_binary(items: list[Item], j: int) -> bool:
    it = items[j]
    if it.text not in OPS or j == 0:
        return False
    p = items[j - 1]
    if it.text in ("in", "is", "not") and p.text in ("not", "is"):
        return False
    if it.text == "not" and j + 1 < len(items) and items[j + 1].text != "in":
        return False
    if it.text == "for" and p.text == "async":
        return False
    if p.kind == "close" or p.kind == "string" or p.ttype == tokenize.NUMBER:
        return True
    return p.ttype == tokenize.NAME and p.text not in KEYWORDS


class Layout:
    def __init__(self, items, first_prefix, stack0, hang_base):
        self.items, self.first_prefix, self.stack0 = items, first_prefix, stack0
        self.hang_base = hang_base
        self.calls = 0

    def run(self):
        return self.search(self.items, 0, len(self.first_prefix), self.stack0, True, 0)

    def search(self, items, i, indent, stack, first, depth_rec):
        """Best (cost, lines) laying out items[i:] starting a line at column ``indent``."""
        self.calls += 1
        INF = (99, 0, 0, 0, 0)
        if depth_rec > 12 or self.calls > 4000:
            return INF, None
        line = self.first_prefix if first else " " * indent
        col = len(line)
        st = list(stack)
        cands = []            # (depth, prio, j, new_indent, stack tuple, line)
        hangs = []
        info = {}             # j -> (line before item j, its start column, stack before it)
        for j in range(i, len(items)):
            it = items[j]
            sep = "" if j == i else it.sep
            start = col + width(sep)
            end = start + width(it.text)
            info[j] = (line, start, tuple(st))
            if j > i and is_binary(items, j) and st:
                cands.append((len(st), 1, j - 1, st[-1], tuple(st), line))
            if end > LIMIT:
                return self.overflow(items, i, j, indent, stack, first, cands, hangs, info,
                                     depth_rec)
            line += sep + it.text
            col = end
            if it.kind == "open":
                st.append(end)
                if j + 1 < len(items) and items[j + 1].kind != "close":
                    hangs.append((len(st), j, tuple(st[:-1]), line))
            elif it.kind == "close" and st:
                st.pop()
            elif it.kind == "comma" and st and j + 1 < len(items):
                cands.append((len(st), 0, j, st[-1], tuple(st), line))
        return (0, 0, 1, 0, 0), [line]

    def overflow(self, items, i, j, indent, stack, first, cands, hangs, info, dr):
        options = []

        def sub(prefix_line, k, new_indent, new_stack, hang=0, depth=0):
            cost, rest = self.search(items, k + 1, new_indent, new_stack, False, dr + 1)
            if rest is None:
                return
            cost = (cost[0] + (width(prefix_line) > LIMIT), cost[1] + hang + 2 * (new_indent > 70),
                    cost[2] + 1,
                    cost[3] + depth, cost[4])
            options.append((cost, [prefix_line] + rest))

        def col_of(k, prefix_line):
            return width(prefix_line) + width(items[k + 1].sep) if k + 1 < len(items) else 0

        valid = [c for c in cands if c[3] < col_of(c[2], c[5])]
        if valid:
            best = min(valid, key=lambda c: (c[0], c[1], -c[2]))
            sub(best[5], best[2], best[3], list(best[4]), depth=best[0])
            right = max(valid, key=lambda c: (c[2], -c[1]))
            if right is not best:
                sub(right[5], right[2], right[3], list(right[4]), depth=right[0])
        for d, k, stk, pl in sorted(hangs)[:2]:
            new_indent = self.hang_base + 4
            if new_indent < col_of(k, pl):
                sub(pl, k, new_indent, list(stk) + [new_indent], hang=1, depth=d)
        js = j
        while js > i and items[js].kind != "string":
            js -= 1
        if items[js].kind == "string":
            line, start, st = info[js]
            it = items[js]
            if not st:
                # wrap the run of adjacent strings in parentheses and redo this line
                a = js
                while a - 1 >= i and items[a - 1].kind == "string":
                    a -= 1
                b = js
                while b + 1 < len(items) and items[b + 1].kind == "string":
                    b += 1
                new = items[:a] + [Item(items[a].sep, "(", "open", tokenize.OP)] \
                    + [Item("" if x == a else items[x].sep, items[x].text, "string",
                            tokenize.STRING) for x in range(a, b + 1)] \
                    + [Item("", ")", "close", tokenize.OP)] + items[b + 1:]
                cost, rest = self.search(new, i, indent, stack, first, dr + 1)
                if rest is not None:
                    options.append((cost[:4] + (cost[4] + 1,), rest))
            else:
                sep = "" if js == i else it.sep
                suffix, x = 0, js + 1
                while x < len(items) and items[x].kind not in ("comma", "string", "open"):
                    suffix += width(items[x].sep) + width(items[x].text)
                    x += 1
                if x < len(items) and items[x].kind == "comma":
                    suffix += width(items[x].sep) + 1
                pieces = split_string(it.text, start, start, suffix)
                if pieces:
                    lines = [line + sep + pieces[0]] + [" " * start + p for p in pieces[1:-1]]
                    new = items[:js] + [Item("", pieces[-1], "string", tokenize.STRING)] \
                        + items[js + 1:]
                    cost, rest = self.search(new, js, start, st, False, dr + 1)
                    if rest is not None:
                        cost = (cost[0], cost[1] + 2 * (start > 70), cost[2] + len(lines), cost[3],
                                cost[4] + 1)
                        options.append((cost, lines + rest))
        if not options:
            return (99, 0, 0, 0, 0), None
        return min(options, key=lambda o: o[0])


def open_at_end(an: Analysis, idx: list[int]) -> list[int]:
    """The open-bracket tokens still open after the last token of a line."""
    st = list(an.stack_before[idx[-1]])
    t = an.toks[idx[-1]]
    if t.type == tokenize.OP and t.string in "([{":
        st.append(idx[-1])
    elif t.type == tokenize.OP and t.string in ")]}" and st:
        st.pop()
    return st


def wrap_items(items, a, b):
    """Items with items[a:b] put in parentheses."""
    if a >= b:
        return None
    inner = [Item("" if x == a else items[x].sep, items[x].text, items[x].kind, items[x].ttype)
             for x in range(a, b)]
    return items[:a] + [Item(items[a].sep, "(", "open", tokenize.OP)] + inner \
        + [Item("", ")", "close", tokenize.OP)] + items[b:]


def paren_variants(items):
    """Whole-statement items with a bracket-less part put in parentheses (AST unchanged)."""
    depth, top = 0, []
    for x, it in enumerate(items):
        if it.kind == "open":
            depth += 1
        elif it.kind == "close":
            depth -= 1
        elif depth == 0:
            top.append(x)
    head = items[0].text
    out = []
    if head == "return" and len(items) > 1:
        out.append(wrap_items(items, 1, len(items)))
    elif head == "from":
        imp = [x for x in top if items[x].text == "import"]
        if imp and imp[0] + 1 < len(items) and items[imp[0] + 1].text != "(":
            out.append(wrap_items(items, imp[0] + 1, len(items)))
    elif head == "assert":
        commas = [x for x in top if items[x].kind == "comma"]
        c = commas[0] if commas else len(items)
        if c + 1 < len(items):
            out.append(wrap_items(items, c + 1, len(items)))
            both = wrap_items(items, c + 1, len(items))
            out.append(wrap_items(both, 1, c))
        out.append(wrap_items(items, 1, c))
    elif head in ("if", "elif", "while") and items[-1].text == ":":
        out.append(wrap_items(items, 1, len(items) - 1))
    else:
        eq = [x for x in top if items[x].ttype == tokenize.OP and (items[x].text == "="
              or (items[x].text.endswith("=") and items[x].text not in ("==", "!=", "<=", ">=")))]
        if eq and items[0].text not in ("def", "class", "lambda", "for", "with"):
            out.append(wrap_items(items, eq[-1] + 1, len(items)))
    return [v for v in out if v]


# ---------------------------------------------------------------- the file


class Wrapper:
    def __init__(self, path: Path, text: str, snippets: list[str]):
        self.path, self.orig, self.snippets = path, text, snippets
        self.lines = text.splitlines(keepends=True)
        self.giveup: set[str] = set()      # stripped texts of lines we could not fix
        self.notes: list[str] = []

    def protected(self) -> set[int]:
        text = "".join(self.lines)
        starts = [0]
        for ln in self.lines:
            starts.append(starts[-1] + len(ln))
        out = set()
        import bisect
        for snip in self.snippets:
            k = text.find(snip)
            while k >= 0:
                a = bisect.bisect_right(starts, k) - 1
                b = bisect.bisect_right(starts, k + max(len(snip), 1) - 1) - 1
                out.update(range(a + 1, b + 2))
                k = text.find(snip, k + 1)
        return out

    def run(self) -> str:
        for _ in range(5000):
            text = "".join(self.lines)
            prot = self.protected()
            long = [n for n, ln in enumerate(self.lines, 1)
                    if width(ln.rstrip("\r\n")) > LIMIT and n not in prot
                    and ln.rstrip("\r\n") not in self.giveup]
            if not long:
                break
            n = long[0]
            key = self.lines[n - 1].rstrip("\r\n")
            try:
                an = Analysis(text)
                tree = ast.parse(text)
            except (SyntaxError, tokenize.TokenError):
                return self.orig
            try:
                ok = self.fix(an, tree, n)
            except Exception as exc:  # a bug in this script must not break the tree
                self.notes.append(f"{self.path}:{n}: internal error {exc!r}")
                ok = False
            if not ok:
                self.giveup.add(key)
        return "".join(self.lines)

    # ------------------------------------------------------------ dispatch

    def fix(self, an: Analysis, tree, n: int) -> bool:
        line = self.lines[n - 1].rstrip("\r\n")
        if n in an.in_string:
            si = an.in_string[n]
            t = an.toks[si]
            if t.start[0] in docstring_lines(tree) and an.toks[si].start[0] == t.start[0]:
                return self.fix_docstring(an, si, n)
            return False
        idx = an.online.get(n, [])
        if not idx:
            return False
        toks = [an.toks[i] for i in idx]
        if toks[0].type == tokenize.COMMENT:
            return self.fix_comment(n, toks[0])
        if toks[-1].type == tokenize.COMMENT:
            return self.move_comment(an, n, idx)
        if any(t.end[0] != n for t in toks):
            return False
        if toks[0].type == tokenize.STRING and toks[0].start[0] in docstring_lines(tree):
            return self.fix_docstring(an, idx[0], n)
        return self.fix_code(an, n, idx)

    # ------------------------------------------------------------ comments

    def fix_comment(self, n: int, tok: Tok) -> bool:
        line = self.lines[n - 1].rstrip("\r\n")
        if PRAGMA.search(tok.string):
            return False
        m = re.match(r"(\s*#+:?\s?)(.*)$", line)
        prefix, body = m.group(1), m.group(2)
        if not body.strip() or body.startswith(" "):
            return False
        cont = prefix
        mk = MARKER.match(body)
        if mk and mk.group(0).endswith(" ") and not body.startswith("#"):
            cont = prefix + " " * mk.end()
        plain = [ln.rstrip("\r\n") for ln in self.lines]

        def follow(k):
            ln = plain[k]
            if not ln.startswith(cont) or len(ln) <= len(cont):
                return None
            rest = ln[len(cont):]
            if rest.startswith(" ") or MARKER.match(rest) or PRAGMA.search(ln) \
                    or not re.search(r"\w", rest[:1] or "-"):
                return None
            if plain[k - 1].rstrip().endswith("::") or plain[k - 1].rstrip().endswith(":"):
                return None
            return rest
        res = cascade(plain, n - 1, prefix, body, cont, follow)
        if res is None:
            return False
        self.lines = [ln + "\n" for ln in plain]
        self._restore_eol()
        return True

    def _restore_eol(self):
        if not self.orig.endswith("\n") and self.lines:
            self.lines[-1] = self.lines[-1].rstrip("\n")

    def move_comment(self, an: Analysis, n: int, idx: list[int]) -> bool:
        line = self.lines[n - 1].rstrip("\r\n")
        ctok = an.toks[idx[-1]]
        if PRAGMA.search(ctok.string) or len(idx) < 2:
            return False
        code = line[:ctok.start[1]].rstrip()
        if width(code + "  " + ctok.string) <= LIMIT:
            # only the padding before the comment made it too long
            self.lines[n - 1] = code + "  " + ctok.string + "\n"
            return True
        first = idx[0]
        s = an.toks[an.stmt_start[first]]
        at = s.start[0]
        indent = s.start[1]
        if at in an.in_string and an.toks[an.in_string[at]].start[0] != at:
            return False
        if len(self.lines[at - 1]) - len(self.lines[at - 1].lstrip()) != indent:
            return False
        comment = " " * indent + ctok.string.strip()
        self.lines[n - 1] = code + "\n"
        self.lines.insert(at - 1, comment + "\n")
        return True

    # ------------------------------------------------------------ docstrings

    def fix_docstring(self, an: Analysis, si: int, n: int) -> bool:
        t = an.toks[si]
        s0, s1 = t.start[0], t.end[0]
        plain = [ln.rstrip("\r\n") for ln in self.lines]
        line = plain[n - 1]
        m = STRPREFIX.match(t.string)
        if not m or "r" in m.group(1).lower() and "\\" in t.string:
            pass
        base_col = t.start[1]
        inner = [plain[k - 1] for k in range(s0 + 1, s1 + 1) if plain[k - 1].strip()]
        base = min((len(x) - len(x.lstrip()) for x in inner), default=base_col)
        base = min(base, base_col) if not inner else base
        if n == s0:
            if t.start[1] != len(line) - len(line.lstrip()):
                return False            # code before the docstring on the same line
            lead_len = t.start[1] + len(m.group(0))
            prefix, body = line[:lead_len], line[lead_len:]
            cont = " " * base_col
            if s0 == s1 and not body.startswith(" "):
                # one-line docstring: its continuation is indented like the opening quotes
                cont = " " * base_col
            elif inner:
                cont = " " * base
        else:
            ind = len(line) - len(line.lstrip())
            stripped = line.strip()
            if stripped.startswith((">>>", "...", "$ ", "|")):
                return False
            # parent: the previous less indented line; a literal block if it ends with '::'
            # or is separated by a blank line while this line is indented beyond the base
            if ind > base:
                k, blank = n - 2, False
                while k >= s0 - 1:
                    txt = plain[k]
                    if not txt.strip():
                        blank = True
                    elif len(txt) - len(txt.lstrip()) < ind or k == s0 - 1:
                        break
                    k -= 1
                par = plain[k].strip() if k >= s0 - 1 else ""
                pmk = MARKER.match(par) if par else None
                is_item = pmk and (len(plain[k]) - len(plain[k].lstrip())) + pmk.end() == ind
                if par.endswith("::") or (blank and not is_item):
                    return False
            # literal block anywhere above in the same indented run?
            prefix, body = line[:ind], line[ind:]
            cont = " " * ind
            mk = MARKER.match(body)
            if mk and mk.group(0).endswith(" ") and not body.startswith(("|", "#")):
                cont = " " * (ind + mk.end())
            elif mk and body.startswith("|"):
                return False
        prev_ends_colons = [False]

        def follow(k):
            # only lines inside the docstring, same indentation, plain text
            if k + 1 > s1 or k + 1 <= s0:
                return None
            ln = plain[k]
            if not ln.startswith(cont) or not ln.strip():
                return None
            rest = ln[len(cont):]
            if rest.startswith(" ") or MARKER.match(rest) or rest.startswith(('"""', "'''")):
                return None
            if re.fullmatch(r"[-=~^*#`:.'\"+_]+", rest.strip()):
                return None
            if plain[k - 1].rstrip().endswith(("::", "\\")):
                return None
            if k + 1 == s1 and rest.rstrip().endswith(('"""', "'''")) and \
                    len(rest.rstrip()) <= 3:
                return None
            if k + 1 < len(plain) and re.fullmatch(r"\s*[-=~^*]{3,}\s*", plain[k + 1]):
                return None     # a section title
            return rest
        if line.rstrip().endswith("\\") or body.rstrip().endswith("::"):
            follow_fn = lambda k: None  # noqa: E731
        else:
            follow_fn = follow
        res = cascade(plain, n - 1, prefix, body, cont, follow_fn)
        if res is None:
            return False
        self.lines = [ln + "\n" for ln in plain]
        self._restore_eol()
        return True

    # ------------------------------------------------------------ code

    def fix_code(self, an: Analysis, n: int, idx: list[int]) -> bool:
        line = self.lines[n - 1].rstrip("\r\n")
        toks = [an.toks[i] for i in idx]
        items = make_items(line, toks)
        first = idx[0]
        stack0 = [an.align_of(b) for b in an.stack_before[first]]
        s = an.toks[an.stmt_start[first]]
        hang_base = len(self.lines[s.start[0] - 1]) - len(self.lines[s.start[0] - 1].lstrip())
        if s.string in ("def", "async", "class", "if", "elif", "while", "for", "with") \
                and not stack0:
            hang_base += 4
        if stack0 and s.start[0] != n:
            hang_base = len(line) - len(line.lstrip())
        backslash = line.rstrip().endswith("\\")
        if backslash:
            items.append(Item(line[toks[-1].end[1]:len(line.rstrip()) - 1], "\\", "other"))
        cost, out = Layout(items, line[:toks[0].start[1]], stack0, hang_base).run()
        if (out is None or cost[0] or cost[1]) and not stack0 and not backslash:
            after = idx[-1] + 1
            whole = after < len(an.toks) and an.toks[after].type == tokenize.NEWLINE \
                and an.toks[first].start[0] == n
            for variant in (paren_variants(items) if whole else []):
                c2, o2 = Layout(variant, line[:toks[0].start[1]], stack0, hang_base).run()
                if o2 is not None and not c2[0] and (out is None or cost[0] or c2 < cost):
                    cost, out = c2, o2
        if out is None or cost[0] or len(out) < 2:
            return False
        if any(width(x) > LIMIT for x in out):
            return False
        new = [x.rstrip() + "\n" for x in out]
        eol = self.lines[n - 1][len(line):]
        new[-1] = new[-1].rstrip("\n") + eol
        old_aligns = [an.align_of(b) for b in open_at_end(an, idx) if an.toks[b].start[0] == n]
        self.lines[n - 1:n] = new
        if old_aligns:
            self.realign(n, n + len(new) - 1, old_aligns)
        return True

    def realign(self, n: int, last: int, old_aligns: list[int]) -> None:
        """Shift the existing continuation lines inside the brackets that line ``n`` left open
        by as much as those brackets moved."""
        try:
            an = Analysis("".join(self.lines))
        except (SyntaxError, tokenize.TokenError):
            return
        idx = an.online.get(last, [])
        if not idx:
            return
        opened = [b for b in open_at_end(an, idx) if n <= an.toks[b].start[0] <= last]
        if len(opened) != len(old_aligns):
            return
        delta = {b: an.align_of(b) - a for b, a in zip(opened, old_aligns)}
        m = last + 1
        while m <= len(self.lines):
            toks = an.online.get(m)
            if not toks:
                if m in an.in_string or self.lines[m - 1].strip():
                    break
                m += 1
                continue
            if m in an.in_string and an.toks[an.in_string[m]].start[0] < m:
                m += 1
                continue
            inside = [b for b in an.stack_before[toks[0]] if b in delta]
            if not inside:
                break
            d = delta[inside[-1]]
            text = self.lines[m - 1]
            lead = len(text) - len(text.lstrip(" "))
            if d > 0:
                self.lines[m - 1] = " " * d + text
            elif d < 0 and lead >= -d:
                self.lines[m - 1] = text[-d:]
            m += 1


# ---------------------------------------------------------------- checks


def normalised_dump(text: str) -> str:
    tree = ast.parse(text)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                body[0].value.value = " ".join(body[0].value.value.split())
    return ast.dump(tree)


def mutation_snippets(root: Path) -> list[str]:
    """The ``old`` snippets of validation/mutations.py's edits, read from its AST (not imported)."""
    path = root / MUTATIONS
    if not path.exists():
        return []
    tree = ast.parse(path.read_text())
    names: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            for tgt in node.targets:
                if isinstance(tgt, ast.Name) and isinstance(node.value, ast.Constant):
                    names[tgt.id] = node.value.value
                elif isinstance(tgt, ast.Tuple) and isinstance(node.value, ast.Tuple):
                    for a, b in zip(tgt.elts, node.value.elts):
                        if isinstance(a, ast.Name) and isinstance(b, ast.Constant):
                            names[a.id] = b.value
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Mutation" \
                and len(node.args) >= 2 and isinstance(node.args[1], ast.Tuple):
            for edit in node.args[1].elts:
                if not (isinstance(edit, ast.Tuple) and len(edit.elts) >= 2):
                    continue
                file, old = edit.elts[0], edit.elts[1]
                file = names.get(file.id) if isinstance(file, ast.Name) else \
                    getattr(file, "value", None)
                if isinstance(file, str) and isinstance(old, ast.Constant) \
                        and isinstance(old.value, str) and old.value.strip():
                    out.append((file, old.value))
    return out


def default_paths(root: Path) -> list[Path]:
    out = subprocess.run(["git", "ls-files", "--", *(f"{r}/*.py" for r in ROOTS)], cwd=root,
                         capture_output=True, text=True, check=True).stdout.split()
    return [root / p for p in sorted(out)]


def long_lines(text: str) -> list[int]:
    return [n for n, ln in enumerate(text.splitlines(), 1) if width(ln) > LIMIT]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Wrap Python lines longer than 100 characters.")
    ap.add_argument("paths", nargs="*", type=Path)
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file would")
    args = ap.parse_args(argv)
    root = Path(subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True,
                               text=True).stdout.strip() or ".")
    paths = args.paths or default_paths(root)
    snippets = mutation_snippets(root)
    changed, skipped, remaining, before_total = [], [], [], 0
    for path in paths:
        text = path.read_text(encoding="utf-8")
        before_total += len(long_lines(text))
        try:
            before = normalised_dump(text)
        except SyntaxError as exc:
            skipped.append(f"{path}: does not parse ({exc.msg})")
            remaining += [f"{path}:{n}" for n in long_lines(text)]
            continue
        try:
            relpath = path.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            relpath = str(path)
        mine = [old for file, old in snippets if file == relpath]
        w = Wrapper(path, text, mine)
        new = w.run()
        reason = None
        if new != text:
            try:
                compile(new, str(path), "exec", dont_inherit=True)
                if normalised_dump(new) != before:
                    reason = "AST differs after wrapping"
            except SyntaxError as exc:
                reason = f"would not compile ({exc.msg}, line {exc.lineno})"
            if reason is None:
                for s in mine:
                    if text.count(s) != new.count(s):
                        reason = f"mutation snippet {s.strip()[:50]!r} would stop matching"
                        break
        if reason:
            skipped.append(f"{path}: {reason}")
            new = text
        for note in w.notes:
            print(f"note: {note}", file=sys.stderr)
        if new != text:
            changed.append(path)
            if not args.check:
                path.write_text(new, encoding="utf-8")
        remaining += [f"{path}:{n}" for n in long_lines(new)]
    rel = lambda p: str(Path(p).resolve().relative_to(root.resolve())) \
        if str(Path(p).resolve()).startswith(str(root.resolve())) else str(p)  # noqa: E731
    print(f"files scanned: {len(paths)}; lines over {LIMIT} before: {before_total}, "
          f"after: {len(remaining)}")
    print(f"files {'that would change' if args.check else 'changed'}: {len(changed)}")
    for p in changed:
        print(f"  {rel(p)}")
    print(f"lines still over {LIMIT}: {len(remaining)}")
    for r in remaining:
        print(f"  {rel(r.rsplit(':', 1)[0])}:{r.rsplit(':', 1)[1]}")
    print(f"files skipped by the safety check: {len(skipped)}")
    for s in skipped:
        print(f"  {s}")
    if args.check:
        return 1 if changed else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
