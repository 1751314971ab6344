"""The part of Azure AI Search's OData `$filter` language the stand-in search service evaluates (Microsoft Learn,
"OData language overview", "OData comparison operators", "OData collection operators: any and all", "search.in"):

    expression := or ; or := and ('or' and)* ; and := not ('and' not)* ; not := 'not' not | primary
    primary    := '(' expression ')' | path '/any(' var ':' expression ')' | path '/all(' var ':' expression ')'
                  | path '/any()' | 'search.in(' path ',' string [',' string] ')' | operand op operand
    op         := eq | ne | gt | ge | lt | le
    operand    := path (field/sub/field, or lambda variable/field) | 'string' ('' is a quote) | number | null
                  | true | false

A filter that uses anything else raises ODataError with the service's "Invalid expression" wording, so a test
cannot pass on a filter the service would refuse without noticing. A field missing from the index schema (when one
is given) raises the service's "Could not find a property named 'X' on type 'search.document'."
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

TOKEN = re.compile(
    r"\s*(?:(?P<string>'(?:[^']|'')*')|(?P<number>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_.]*)|(?P<punct>[/():,]))"
)
COMPARISONS = {
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "gt": lambda a, b: a is not None and b is not None and a > b,
    "ge": lambda a, b: a is not None and b is not None and a >= b,
    "lt": lambda a, b: a is not None and b is not None and a < b,
    "le": lambda a, b: a is not None and b is not None and a <= b,
}
Node = Callable[[dict[str, Any], dict[str, Any]], Any]


class ODataError(ValueError):
    """The service's 400 for a filter it cannot parse or that names an unknown field."""


def _tokens(text: str) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    position = 0
    text = text.rstrip()
    while position < len(text):
        match = TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise ODataError(f"Invalid expression: Syntax error at position {position} in '{text}'.")
        kind = match.lastgroup or ""
        found.append((kind, match.group(kind)))
        position = match.end()
    return found


class _Parser:
    def __init__(self, text: str, fields: set[str] | None) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.position = 0
        self.fields = fields
        self.variables: list[str] = []

    def peek(self, offset: int = 0) -> tuple[str, str] | None:
        at = self.position + offset
        return self.tokens[at] if at < len(self.tokens) else None

    def take(self, value: str | None = None) -> tuple[str, str]:
        token = self.peek()
        if token is None or (value is not None and token[1] != value):
            raise ODataError(f"Invalid expression: Syntax error: expected '{value}' in '{self.text}'.")
        self.position += 1
        return token

    def parse(self) -> Node:
        node = self.expression()
        if self.peek() is not None:
            raise ODataError(f"Invalid expression: Syntax error at '{self.peek()[1]}' in '{self.text}'.")  # type: ignore[index]
        return node

    def expression(self) -> Node:
        left = self.conjunction()
        while self.peek() == ("name", "or"):
            self.take()
            left = _either(left, self.conjunction())
        return left

    def conjunction(self) -> Node:
        left = self.negation()
        while self.peek() == ("name", "and"):
            self.take()
            left = _both(left, self.negation())
        return left

    def negation(self) -> Node:
        if self.peek() == ("name", "not"):
            self.take()
            inner = self.negation()
            return lambda doc, env: not inner(doc, env)
        return self.primary()

    def primary(self) -> Node:
        token = self.peek()
        if token == ("punct", "("):
            self.take("(")
            inner = self.expression()
            self.take(")")
            return inner
        if token == ("name", "search.in"):
            return self.search_in()
        left = self.operand()
        if isinstance(left, tuple) and left[0] == "lambda":
            return left[1]
        operator = self.peek()
        if operator is None or operator[1] not in COMPARISONS:
            raise ODataError(f"Invalid expression: a comparison was expected in '{self.text}'.")
        self.take()
        right = self.operand()
        compare = COMPARISONS[operator[1]]
        return lambda doc, env: compare(left(doc, env), right(doc, env))  # type: ignore[operator]

    def search_in(self) -> Node:
        self.take("search.in")
        self.take("(")
        value = self.operand()
        self.take(",")
        kind, raw = self.take()
        if kind != "string":
            raise ODataError("Invalid expression: search.in takes a string of values.")
        delimiter = " ,"
        if self.peek() == ("punct", ","):
            self.take(",")
            delimiter = self.take()[1][1:-1].replace("''", "'")
        self.take(")")
        values = {v for v in re.split("[" + re.escape(delimiter) + "]", raw[1:-1].replace("''", "'")) if v}
        return lambda doc, env: value(doc, env) in values  # type: ignore[operator]

    def operand(self) -> Any:
        kind, raw = self.take()
        if kind == "string":
            text = raw[1:-1].replace("''", "'")
            return lambda doc, env: text
        if kind == "number":
            number = float(raw) if any(c in raw for c in ".eE") else int(raw)
            return lambda doc, env: number
        if kind != "name":
            raise ODataError(f"Invalid expression: unexpected '{raw}' in '{self.text}'.")
        if raw in ("null", "true", "false"):
            constant = {"null": None, "true": True, "false": False}[raw]
            return lambda doc, env: constant
        path = [raw]
        while self.peek() == ("punct", "/"):
            self.take("/")
            name = self.take()
            if name[1] in ("any", "all"):
                return ("lambda", self.collection(path, name[1]))
            path.append(name[1])
        return self.path(path)

    def path(self, path: list[str]) -> Node:
        if path[0] in self.variables:
            rest = path[1:]
            variable = path[0]
            return lambda doc, env: _walk(env.get(variable), rest)
        if self.fields is not None and path[0] not in self.fields:
            raise ODataError(
                f"Invalid expression: Could not find a property named '{path[0]}' on type 'search.document'."
            )
        return lambda doc, env: _walk(doc, path)

    def collection(self, path: list[str], quantifier: str) -> Node:
        items = self.path(path)
        self.take("(")
        if self.peek() == ("punct", ")"):
            self.take(")")
            return lambda doc, env: bool(items(doc, env))
        variable = self.take()[1]
        self.take(":")
        self.variables.append(variable)
        body = self.expression()
        self.variables.pop()
        self.take(")")
        check = any if quantifier == "any" else all

        def evaluate(doc: dict[str, Any], env: dict[str, Any]) -> bool:
            values = items(doc, env) or []
            return check(bool(body(doc, {**env, variable: value})) for value in values)

        return evaluate


def _either(a: Node, b: Node) -> Node:
    return lambda doc, env: bool(a(doc, env)) or bool(b(doc, env))


def _both(a: Node, b: Node) -> Node:
    return lambda doc, env: bool(a(doc, env)) and bool(b(doc, env))


def _walk(value: Any, path: Iterable[str]) -> Any:
    for name in path:
        if not isinstance(value, dict):
            return None
        value = value.get(name)
    return value


def compile_filter(text: str, fields: set[str] | None = None) -> Callable[[dict[str, Any]], bool]:
    """A predicate over documents for the `$filter` expression `text`. ODataError (the service's 400 message) for
    what the service would refuse, or what this subset does not cover."""
    node = _Parser(text, fields).parse()
    return lambda doc: bool(node(doc, {}))


def values_at(document: dict[str, Any], path: str) -> list[Any]:
    """Every value at `path` (`labels`, `images/modelVersion`): collections along the way are flattened, as a
    facet over a field of a complex collection counts each document once per distinct value."""
    current: list[Any] = [document]
    for name in path.split("/"):
        following: list[Any] = []
        for value in current:
            found = value.get(name) if isinstance(value, dict) else None
            if isinstance(found, list):
                following.extend(found)
            elif found is not None:
                following.append(found)
        current = following
    return current
