"""The bounded Jinja2 sandbox templates render in: immutable, and limited in time and size.

A workflow template is code from a file, and its loops run on the machine of whoever
runs the workflow. Jinja2's immutable sandbox stops it from reaching Python objects; this
module also stops it from running forever or filling memory::

    with render_budget(RenderLimits(seconds=0.5)):
        text = bounded_render(template, context)

Inside one budget (one render of one task, condition, gate prompt or output):

- ``range()`` yields at most ``max_range`` items;
- all ``{% for %}`` loops together run at most ``max_iterations`` times;
- the output, and every string or list built on the way (``*``, ``+``, ``%``, filters,
  string methods, ``namespace`` attributes), stays within ``max_chars``;
- the render stops after ``seconds`` (checked at every loop turn, call, operator and
  output chunk).

Exceeding a limit raises ``RenderLimitError`` naming it; the renderer turns that into a
``WorkflowError`` naming the step and the field.
"""

from __future__ import annotations

import functools
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

#: Padding-like string methods and filters whose first argument is a width in characters.
_WIDTH_FIRST = frozenset({"center", "ljust", "rjust", "zfill", "indent", "expandtabs"})
#: A ``%``- or ``{}``-format spec asking for a width of a million characters or more.
_HUGE_SPEC = re.compile(r"(?:%|\{[^{}]*:)[^a-zA-Z%{}]*?(\d{7,})")
#: A format spec that takes its width from an argument: ``%*s``, ``{:{width}}``.
_ARG_WIDTH = re.compile(r"%[-+ #0]*\*|\{[^{}]*:[^{}]*\{")


@dataclass(frozen=True)
class RenderLimits:
    """What one render may cost.

    Example: ``RenderLimits(seconds=0.2)`` for a test that must not wait 2 s.
    """

    #: Characters of output, and of any one string or list built while rendering.
    max_chars: int = 1024 * 1024
    #: Items of one ``range()``.
    max_range: int = 10_000
    #: Turns of all ``{% for %}`` loops of one render together.
    max_iterations: int = 100_000
    #: Seconds of one render.
    seconds: float = 2.0

    def describe(self) -> str:
        """The limits as one phrase, for messages and docs."""
        return (
            f"{self.max_chars // 1024:,} KiB of text, range() of {self.max_range:,} items, "
            f"{self.max_iterations:,} loop turns and {self.seconds:g} s per render"
        )


DEFAULT_LIMITS = RenderLimits()


class RenderLimitError(Exception):
    """A render went past one of its ``RenderLimits``."""


class _Budget:
    """The running account of one render."""

    __slots__ = ("limits", "deadline", "turns")

    def __init__(self, limits: RenderLimits) -> None:
        self.limits = limits
        self.deadline = time.monotonic() + limits.seconds
        self.turns = 0

    def check_clock(self) -> None:
        if time.monotonic() > self.deadline:
            raise RenderLimitError(
                f"it ran longer than {self.limits.seconds:g} s (the time limit of one render)"
            )

    def turn(self) -> None:
        self.turns += 1
        if self.turns > self.limits.max_iterations:
            raise RenderLimitError(
                f"its loops ran more than {self.limits.max_iterations:,} times "
                "(the loop limit of one render)"
            )
        self.check_clock()

    def check_size(self, value: Any, what: str = "a value") -> Any:
        if isinstance(value, str | list | tuple | bytes) and len(value) > self.limits.max_chars:
            self.too_big(len(value), what)
        return value

    def check_estimate(self, size: int, what: str) -> None:
        if size > self.limits.max_chars:
            self.too_big(size, what)

    def too_big(self, size: int, what: str) -> None:
        raise RenderLimitError(
            f"{what} would hold {size:,} characters or items, more than "
            f"{self.limits.max_chars // 1024:,} KiB (the size limit of one render)"
        )


_local = threading.local()


def _budget() -> _Budget:
    """The budget of the render in progress on this thread (a default one outside)."""
    budget = getattr(_local, "budget", None)
    return budget if budget is not None else _Budget(DEFAULT_LIMITS)


@contextmanager
def render_budget(limits: RenderLimits = DEFAULT_LIMITS) -> Iterator[None]:
    """Account everything rendered on this thread inside the block to one budget."""
    outer = getattr(_local, "budget", None)
    _local.budget = _Budget(limits)
    try:
        yield
    finally:
        _local.budget = outer


def bounded_render(template: Any, context: Mapping[str, Any]) -> str:
    """Render a compiled Jinja2 template, stopping at the output and time limits."""
    budget = _budget()
    parts: list[str] = []
    size = 0
    for chunk in template.generate(context):
        size += len(chunk)
        if size > budget.limits.max_chars:
            budget.too_big(size, "the output")
        budget.check_clock()
        parts.append(chunk)
    return "".join(parts)


def check_output(text: str) -> str:
    """Refuse a rendered text over the size limit (for renders done without Jinja2)."""
    return str(_budget().check_size(text, "the output"))


# ----------------------------------------------------------------------------- the guards


def _bounded_range(*args: int) -> range:
    budget = _budget()
    budget.check_clock()
    items = range(*args)
    if len(items) > budget.limits.max_range:
        raise RenderLimitError(
            f"range() of {len(items):,} items exceeds {budget.limits.max_range:,} "
            "(the range limit of one render)"
        )
    return items


def _bounded_iter(iterable: Iterable[Any]) -> Iterator[Any]:
    budget = _budget()
    for item in iterable:
        budget.turn()
        yield item


def _bounded_lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> Any:  # noqa: A002
    from jinja2.utils import generate_lorem_ipsum

    _budget().check_estimate(int(n) * int(max) * 12, "lipsum()")
    return generate_lorem_ipsum(n=n, html=html, min=min, max=max)


def _amplification(name: str, subject: Any, args: tuple[Any, ...]) -> int | None:
    """The size a padding/replace/join/format operation would produce, when it can be large."""
    big_ints = [a for a in args if isinstance(a, int) and not isinstance(a, bool)]
    if name in _WIDTH_FIRST and big_ints:
        lines = subject.count("\n") + 1 if isinstance(subject, str) else 1
        return max(big_ints) * lines
    if name == "replace" and isinstance(subject, str) and len(args) >= 2:
        old, new = str(args[0]), str(args[1])
        hits = subject.count(old) if old else len(subject) + 1
        if len(args) >= 3 and isinstance(args[2], int) and args[2] >= 0:
            hits = min(hits, args[2])
        return len(subject) + hits * max(0, len(new) - len(old))
    if name == "join":
        return None  # checked by the caller, which knows which side is the separator
    if name in ("format", "format_map") and isinstance(subject, str):
        huge = _HUGE_SPEC.search(subject)
        if huge:
            return int(huge.group(1))
        if big_ints and _ARG_WIDTH.search(subject):
            return max(big_ints)
    return None


def _join_size(separator: Any, items: Any) -> int | None:
    if isinstance(separator, str) and hasattr(items, "__len__"):
        return len(separator) * max(0, len(items) - 1) + sum(
            len(i) for i in items if isinstance(i, str)
        )
    return None


def _guard_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a filter with the size and time checks (keeping Jinja2's pass_* marker)."""
    from jinja2.utils import _PassArg

    passes = _PassArg.from_obj(func) is not None

    @functools.wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        budget.check_clock()
        value, rest = (args[1], args[2:]) if passes else (args[0], args[1:])
        rest = (*rest, *kwargs.values())
        if name == "join":
            sep = rest[0] if rest else ""
            size = _join_size(sep, value if hasattr(value, "__len__") else ())
        else:
            size = _amplification(name, value, rest)
        if size is not None:
            budget.check_estimate(size, f"the `{name}` filter")
        return budget.check_size(func(*args, **kwargs), f"the `{name}` filter")

    return guarded


def _make_environment() -> Any:
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from jinja2.utils import Namespace

    class BoundedNamespace(Namespace):
        """``namespace()``: attributes set in loops are held to the size limit."""

        def __setitem__(self, name: str, value: Any) -> None:
            _budget().check_size(value, f"namespace attribute `{name}`")
            super().__setitem__(name, value)

    class BoundedSandbox(ImmutableSandboxedEnvironment):
        """The immutable sandbox, with every loop, call and sizeable operator accounted."""

        intercepted_binops = frozenset({"*", "**", "+", "%"})
        #: What every loop iterates through (see guard_loops).
        bounded_iter = staticmethod(_bounded_iter)

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            budget = _budget()
            budget.check_clock()
            if operator == "*":
                seq, n = (left, right) if isinstance(right, int) else (right, left)
                if isinstance(n, int) and hasattr(seq, "__len__"):
                    budget.check_estimate(len(seq) * max(n, 0), "a repetition (`*`)")
            elif operator == "**" and isinstance(left, int) and isinstance(right, int):
                if right > 0 and abs(left) > 1 and right * abs(left).bit_length() > 65536:
                    raise RenderLimitError(f"{left} ** {right} is too large a number")
            elif operator == "%" and isinstance(left, str):
                args = right if isinstance(right, tuple) else (right,)
                size = _amplification("format", left, args)
                if size is not None:
                    budget.check_estimate(size, "a `%` format")
            result = super().call_binop(context, operator, left, right)
            return budget.check_size(result, f"the result of `{operator}`")

        def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
            wrapped = super().wrap_str_format(value)
            if wrapped is None:
                return None
            spec = value.__self__

            def checked(*args: Any, **kwargs: Any) -> str:
                size = _amplification("format", spec, (*args, *kwargs.values()))
                if size is not None:
                    _budget().check_estimate(size, "`str.format()`")
                return wrapped(*args, **kwargs)

            return checked

        def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
            budget = _budget()
            budget.check_clock()
            subject = getattr(__obj, "__self__", None)
            if isinstance(subject, str):
                name = getattr(__obj, "__name__", "")
                if name == "join" and args:
                    size = _join_size(subject, args[0])
                else:
                    size = _amplification(name, subject, (*args, *kwargs.values()))
                if size is not None:
                    budget.check_estimate(size, f"`str.{name}()`")
            result = super().call(__context, __obj, *args, **kwargs)
            return budget.check_size(result, "a call's result")

    env = BoundedSandbox(
        undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=False
    )
    env.globals["range"] = _bounded_range
    env.globals["lipsum"] = _bounded_lipsum
    env.globals["namespace"] = BoundedNamespace
    env.filters = {name: _guard_filter(name, f) for name, f in env.filters.items()}
    return env


@functools.cache
def environment() -> Any:
    """The one bounded, sandboxed Jinja2 environment of the process."""
    return _make_environment()


def guard_loops(ast: Any) -> Any:
    """Route every ``{% for %}`` of a syntax tree through the loop counter (in place)."""
    from jinja2 import nodes

    for loop in ast.find_all(nodes.For):
        loop.iter = nodes.Call(
            nodes.EnvironmentAttribute("bounded_iter"), [loop.iter], [], None, None
        )
    return ast
