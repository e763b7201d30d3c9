"""The console: one log format, progress that suits where the output goes, and third-party chatter kept quiet.

It is one module because three writers share the terminal and each used to break the others: our log lines landed in
the middle of tqdm's bar; under SLURM (stderr a file) the bar wrote a line per step and never a plain summary line;
and libraries announced themselves on every command (transformers' "PyTorch was not found", absl/orbax/grain INFO).
So: every log line goes through `tqdm.write` (printed above a live bar, never into it); `progress()` gives a bar on a
terminal and, elsewhere, one plain line every `log_every` items with the rate and an ETA; third-party loggers stay
at WARNING unless `--verbose` or BOLT_VERBOSE=1. `setup()` is called once by the command line, before any workflow
imports those libraries. It imports nothing from bolt_jax (the bottom layer) and not jax (`primary` is passed in).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

VERBOSE_ENV = "BOLT_VERBOSE"  # "1": INFO from every library, as --verbose
PROGRESS_ENV = "BOLT_PROGRESS"  # "bar" | "plain" | unset (a bar when stderr is a terminal, else plain lines)
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
# Libraries whose INFO lines are noise at our level (checkpoint internals, data workers, HTTP, telemetry).
NOISY_LOGGERS = ("absl", "orbax", "grain", "transformers", "huggingface_hub", "httpx", "httpcore", "urllib3",
                 "wandb", "jax", "flax", "tensorboardX")
PLAIN_LINES = 10  # plain progress lines per run when no `log_every` is given


def verbose_from_env() -> bool:
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def quiet_third_party(verbose: bool = False) -> None:
    """Keeps other libraries' advisories and INFO lines off the console. transformers prints its "PyTorch was not
    found" advisory at import time, so its environment switches are set here, before anything imports it (a user's
    own TRANSFORMERS_VERBOSITY wins); already imported, its verbosity is lowered directly."""
    if verbose:
        return
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("WANDB_SILENT", "true")
    if "transformers" in sys.modules:
        try:
            sys.modules["transformers"].logging.set_verbosity_error()
        except AttributeError:
            pass
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    if "absl.logging" in sys.modules:  # absl keeps its own verbosity next to the logger's level
        sys.modules["absl.logging"].set_verbosity(sys.modules["absl.logging"].WARNING)


class BarAwareHandler(logging.Handler):
    """Writes each record with `tqdm.write` to the current stderr: above a live bar instead of into it, and as a
    plain line when no bar is shown (tqdm.write is then an ordinary write)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)


def setup(*, verbose: bool = False, primary: bool = True) -> None:
    """The console for a command: one handler (BarAwareHandler, LOG_FORMAT) on the root logger; bolt_jax at INFO on
    the primary process (WARNING elsewhere, so N hosts do not print N copies); everything else at WARNING unless
    `verbose` (or BOLT_VERBOSE=1)."""
    verbose = verbose or verbose_from_env()
    quiet_third_party(verbose)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = BarAwareHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT, DATE_FORMAT))
    root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    if hasattr(sys.stdout, "reconfigure"):  # one file for both streams (SLURM): printed lines stay in order
        sys.stdout.reconfigure(line_buffering=True)
    logging.getLogger("bolt_jax").setLevel(logging.INFO if primary else logging.WARNING)
    if verbose:
        for name in NOISY_LOGGERS:
            logging.getLogger(name).setLevel(logging.NOTSET)


def echo(message: str) -> None:
    """A result line on stdout, printed above a live bar rather than into it (tqdm clears and redraws it)."""
    from tqdm import tqdm
    tqdm.write(message, file=sys.stdout)
    sys.stdout.flush()


def use_bar() -> bool:
    """A bar only where it can redraw itself: stderr is a terminal (BOLT_PROGRESS=bar|plain overrides)."""
    forced = os.environ.get(PROGRESS_ENV, "").strip().lower()
    if forced in ("bar", "plain"):
        return forced == "bar"
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def format_eta(seconds: float) -> str:
    """`1:02:03`, `0:04:05`; `?` when unknown (nothing timed yet)."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def progress(iterable: Iterable[Any] | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
             log_every: int = 0, initial: int = 0, enabled: bool = True):
    """A progress display with tqdm's interface (iterate it, or `update(n)`, `set_postfix(...)`, `close()`): a tqdm
    bar on a terminal; elsewhere a `PlainProgress` logging one line every `log_every` items (0: about
    PLAIN_LINES lines over `total`) and at the end. `enabled=False` (another process than the primary, or the
    user's choice) shows nothing."""
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if enabled and use_bar():
        from tqdm import tqdm
        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, dynamic_ncols=True, file=sys.stderr)
    return PlainProgress(iterable, total=total, desc=desc, unit=unit, log_every=log_every, initial=initial,
                         enabled=enabled)


class PlainProgress:
    """Progress for a file or a pipe (SLURM logs, CI): no carriage returns, one `desc n/total (p%) | postfix |
    rate | ETA` line on the "bolt_jax.progress" logger every `log_every` items and one when done."""

    def __init__(self, iterable: Iterable[Any] | None = None, *, total: int | None = None, desc: str = "",
                 unit: str = "it", log_every: int = 0, initial: int = 0, enabled: bool = True):
        self.iterable = iterable
        self.total = total
        self.desc = desc
        self.unit = unit
        self.n = self._start = initial
        self.log_every = log_every or (max(1, math.ceil((total - initial) / PLAIN_LINES)) if total else 100)
        self.enabled = enabled
        self.postfix = ""
        self._t0 = time.perf_counter()
        self._logged_at = initial
        self._log = logging.getLogger("bolt_jax.progress")
        if total:  # a line at the start, so a log shows what began long before its first update
            self.write(f"{desc} {initial}/{total} {unit}: started".strip())

    def __iter__(self) -> Iterator[Any]:
        try:
            for item in self.iterable or ():
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.n // self.log_every > self._logged_at // self.log_every or self.n == self.total:
            self._emit()

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in {**(ordered_dict or {}), **kwargs}.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def write(self, s: str) -> None:
        if self.enabled:
            self._log.info("%s", s)

    def line(self) -> str:
        """`desc n/total (p%) | postfix | rate unit/s | ETA h:mm:ss` (what a bar shows, on one line)."""
        done = self.n - self._start
        elapsed = time.perf_counter() - self._t0
        rate = done / elapsed if elapsed > 0 and done > 0 else 0.0
        count = f"{self.n}/{self.total} ({self.n / self.total:.0%})" if self.total else f"{self.n}"
        parts = [f"{self.desc} {count}".strip()] + ([self.postfix] if self.postfix else [])
        parts.append(f"{rate:.3g} {self.unit}/s" if rate else f"{elapsed:.1f}s")
        if self.total and rate:
            parts.append(f"ETA {format_eta((self.total - self.n) / rate)}")
        return " | ".join(parts)

    def _emit(self) -> None:
        self._logged_at = self.n
        self.write(self.line())

    def close(self) -> None:
        if self.n != self._logged_at:
            self._emit()


STAGE_CONSOLE = ("stages", "full")  # a multi-stage workflow's console (bootstrap.console)


@contextlib.contextmanager
def stage_output(log_path: str | None) -> Iterator[None]:
    """While one stage of a multi-stage workflow runs (the bootstrap's base, warmstart, E-steps, M-steps, ...): its
    INFO log lines and printed output (step lines, summaries) go to `log_path` only, and the console keeps warnings,
    errors and a live bar. A run of a dozen stages then reads as one line per stage on the console, with everything
    each stage said in its own file. `log_path` None: no change (everything on the console)."""
    if log_path is None:
        yield
        return
    os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
    root = logging.getLogger()
    consoles = [(h, h.level) for h in root.handlers if isinstance(h, BarAwareHandler)]
    with open(log_path, "a", buffering=1) as stream:
        to_file = logging.StreamHandler(stream)
        to_file.setFormatter(logging.Formatter(LOG_FORMAT, DATE_FORMAT))
        for handler, _ in consoles:
            handler.setLevel(max(handler.level, logging.WARNING))
        root.addHandler(to_file)
        try:
            with contextlib.redirect_stdout(stream):
                yield
        finally:
            root.removeHandler(to_file)
            for handler, level in consoles:
                handler.setLevel(level)
