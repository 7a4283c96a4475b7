"""Tokens and the cursor shared by the SLO and objective grammars (see ``autotune.spec.grammar``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from autotune.errors import UserError
from autotune.spec.slo import _FIXED_STATS, _OP_HINT, _OPS

# --------------------------------------------------------------------------- tokens


@dataclass(frozen=True)
class _Token:
    kind: str  # 'num' | 'name' | 'op' | 'punct' | 'end'
    text: str
    col: int  # 1-based column in the user's text, for error messages

    def describe(self) -> str:
        return "end of input" if self.kind == "end" else f"'{self.text}'"

    def is_punct(self, ch: str) -> bool:
        return self.kind == "punct" and self.text == ch

    def is_name(self, name: str) -> bool:
        return self.kind == "name" and self.text.lower() == name


_DIGITS = frozenset("0123456789")
_NAME_START = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_NAME_CHARS = _NAME_START | _DIGITS
_PUNCT = frozenset("()@%,:+-")
# Any run of these is read as one operator token, so that '==', '=<' or '!=' are
# reported as a bad operator rather than as two confusing tokens.
_OP_CHARS = frozenset("<>=!")


def _tokenize(src: str, fail: Callable[[str, int], UserError]) -> list[_Token]:
    tokens: list[_Token] = []
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if c.isspace():
            i += 1
            continue
        start = i
        if c in _DIGITS or (c == "." and i + 1 < n and src[i + 1] in _DIGITS):
            while i < n and src[i] in _DIGITS:
                i += 1
            if i + 1 < n and src[i] == "." and src[i + 1] in _DIGITS:
                i += 1
                while i < n and src[i] in _DIGITS:
                    i += 1
            tokens.append(_Token("num", src[start:i], start + 1))
        elif c in _NAME_START:
            # A '.' followed by a digit stays inside the name so 'p99.9' is one token.
            while i < n and (src[i] in _NAME_CHARS or (src[i] == "." and i + 1 < n and src[i + 1] in _DIGITS)):
                i += 1
            tokens.append(_Token("name", src[start:i], start + 1))
        elif c in _OP_CHARS:
            while i < n and src[i] in _OP_CHARS:
                i += 1
            tokens.append(_Token("op", src[start:i], start + 1))
        elif c in _PUNCT:
            i += 1
            tokens.append(_Token("punct", c, start + 1))
        else:
            raise fail(f"unexpected character {c!r}", start + 1)
    tokens.append(_Token("end", "", n + 1))
    return tokens


class _Parser:
    """Token cursor plus error formatting shared by the SLO and objective grammars."""

    def __init__(self, text: str, what: str) -> None:
        self.what = what
        # Shown in errors on one line; any whitespace becomes one space so columns still line up.
        self.shown = "".join(" " if ch.isspace() else ch for ch in text)
        self.tokens = _tokenize(text, self.fail)
        self.pos = 0

    def fail(self, message: str, col: int | None = None, hint: str | None = None) -> UserError:
        where = f" at column {col}" if col is not None else ""
        tail = f" ({hint})" if hint else ""
        return UserError(f"bad {self.what} '{self.shown}': {message}{where}{tail}")

    def peek(self) -> _Token:
        return self.tokens[self.pos]

    def next(self) -> _Token:
        tok = self.tokens[self.pos]
        if tok.kind != "end":
            self.pos += 1
        return tok

    def at_end(self) -> bool:
        return self.peek().kind == "end"

    def accept_punct(self, ch: str) -> _Token | None:
        if self.peek().is_punct(ch):
            return self.next()
        return None

    def text_since(self, start: int) -> str:
        """Normalised source of tokens[start:pos]: no whitespace, names and units lower-case."""
        return "".join(t.text.lower() for t in self.tokens[start : self.pos])


# --------------------------------------------------------------------------- shared pieces


@dataclass(frozen=True)
class _Target:
    stat: str | None
    stat_tok: _Token | None
    name_tok: _Token

    @property
    def name(self) -> str:
        return self.name_tok.text.lower()


def _is_decimal(s: str) -> bool:
    whole, dot, frac = s.partition(".")
    return bool(whole) and set(whole) <= _DIGITS and (not dot or (bool(frac) and set(frac) <= _DIGITS))


def _format_percentile(value: float) -> str:
    # Same spelling vllm bench serve uses in its keys: p99, p99.9, p50.
    return str(int(value)) if value.is_integer() else repr(value)


def _parse_stat(p: _Parser, tok: _Token) -> str:
    name = tok.text.lower()
    if name in _FIXED_STATS:
        return name
    if name.startswith("p") and _is_decimal(name[1:]):
        value = float(name[1:])
        if not 0 < value <= 100:
            raise p.fail(f"percentile '{tok.text}' out of range", tok.col, "must be above p0 and at most p100")
        return "p" + _format_percentile(value)
    raise p.fail(f"unknown statistic '{tok.text}'", tok.col, "known: mean, median, max, std, pNN such as p99 or p99.9")


def _parse_target(p: _Parser) -> _Target:
    tok = p.next()
    if tok.kind != "name":
        raise p.fail(f"expected a metric but found {tok.describe()}", tok.col)
    if not p.accept_punct("("):
        return _Target(None, None, tok)
    stat = _parse_stat(p, tok)
    inner = p.next()
    if inner.kind != "name":
        raise p.fail(f"expected a metric inside '{tok.text}(...)' but found {inner.describe()}", inner.col)
    close = p.next()
    if not close.is_punct(")"):
        raise p.fail(f"expected ')' after '{inner.text}' but found {close.describe()}", close.col)
    return _Target(stat, tok, inner)


def _parse_op(p: _Parser, after: str) -> str:
    tok = p.next()
    if tok.kind == "op":
        if tok.text in _OPS:
            return tok.text
        raise p.fail(f"bad operator '{tok.text}'", tok.col, _OP_HINT)
    raise p.fail(f"expected an operator after '{after}' but found {tok.describe()}", tok.col, _OP_HINT)


def _parse_number(p: _Parser, after: str, what: str = "a number") -> _Token:
    tok = p.next()
    if tok.kind != "num":
        raise p.fail(f"expected {what} after '{after}' but found {tok.describe()}", tok.col)
    return tok


def _reject_unit(p: _Parser, number: _Token, metric: str) -> None:
    tok = p.peek()
    if tok.kind == "name" and not tok.is_name("and"):
        raise p.fail(f"unexpected unit '{tok.text}' after '{number.text}'", tok.col, f"'{metric}' takes no unit")


def _reject_attainment(p: _Parser, why: str) -> None:
    tok = p.peek()
    if tok.is_punct("@"):
        raise p.fail("attainment target '@' not allowed here", tok.col, why)


def _unknown_metric(p: _Parser, tok: _Token, known: str) -> UserError:
    return p.fail(f"unknown metric '{tok.text}'", tok.col, f"known: {known}")


# --------------------------------------------------------------------------- constraints

