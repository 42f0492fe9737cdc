"""The command line of the project's programs: options from a dataclass's fields, read from a
TOML or JSON file and from `--key value` / `--key=value` flags, checked against the field types;
`--help` prints each field's one-line help (its `help` metadata, `ref_numpy.train.config.option`)
and default; and `run_main`, which turns a user's mistake into one `error:` line and an exit code.

Exit codes: 2 for a user's mistake (`ref_numpy.errors.UserError`, which argparse's own mistakes
become too), 1 for a run that failed on its own (`TrainingFailed`, a diverged loss), 130 for a
second Ctrl-C.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import sys
import tomllib
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, NoReturn

from ref_numpy.errors import UserError
from ref_numpy.train.loop import TrainingFailed


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise ValueError(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


# how a flag's text becomes a value, and what the error says it should have been
_KINDS: dict[type, tuple[Callable[[str], Any], str, str]] = {
    bool: (_parse_bool, "true or false", "BOOL"),
    int: (int, "an integer", "INT"),
    float: (_parse_float, "a finite number", "FLOAT"),
    str: (str, "text", "STR"),
}


def _optional_inner(annotation: Any) -> Any | None:
    """X for an `X | None` annotation, else None."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        return next(a for a in args if a is not type(None))
    return None


def _parser_for(annotation: Any) -> Callable[[str], Any]:
    """The argparse `type` for a dataclass field annotation (str, int, float, bool, X | None);
    its error reads `must be an integer, got 'abc'`."""
    inner = _optional_inner(annotation)
    convert, expected, _ = _KINDS[inner or annotation]
    if inner is not None:
        expected += " or none"

    def parse(text: str) -> Any:
        if inner is not None and text.lower() == "none":
            return None
        try:
            return convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {expected}, got {text!r}") from None

    return parse


def _type_name(annotation: Any) -> str:
    inner = _optional_inner(annotation)
    return f"{inner.__name__} or none" if inner is not None else annotation.__name__


def _checked_value(name: str, value: Any, annotation: Any, source: str) -> Any:
    """A config-file value of the field's type; ints are accepted for floats, nothing else is
    converted (a quoted "3" for an int is a mistake in the file, not a 3)."""
    inner = _optional_inner(annotation)
    if inner is not None:
        if value is None or (isinstance(value, str) and value.lower() == "none"):
            return None
        annotation = inner
    if annotation is bool and isinstance(value, bool):
        return value
    if annotation is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if (
        annotation is float
        and isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
    ):
        return float(value)
    if annotation is str and isinstance(value, str):
        return value
    raise UserError(f"{source}: {name} must be {_type_name(annotation)}, got {value!r}")


def read_config_file(cls: type, path: str | Path) -> dict[str, Any]:
    """The options in a TOML or JSON file, checked against the fields of `cls`.

    A flat table of option names, as on the command line: `batch_size = 64`, `bias = false`.
    TOML has no null; write "none" for an option whose default is None.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file '{path}' does not exist")
    readers = {".toml": (tomllib.loads, tomllib.TOMLDecodeError), ".json": (json.loads, ValueError)}
    if path.suffix.lower() not in readers:
        raise UserError(f"config file '{path}' must end in .toml or .json")
    loads, error_type = readers[path.suffix.lower()]
    try:
        values = loads(path.read_text(encoding="utf-8"))
    except (error_type, UnicodeDecodeError) as error:
        raise UserError(f"config file '{path}' does not parse: {error}") from None
    if not isinstance(values, dict):
        raise UserError(f"config file '{path}' must hold a table of options")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    for key in values:
        if key not in hints or key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UserError(f"config file '{path}': unknown option {key!r}{hint}")
    return {k: _checked_value(k, v, hints[k], f"config file '{path}'") for k, v in values.items()}


class _OptionParser(argparse.ArgumentParser):
    """argparse whose mistakes are a UserError (one `error:` line), not a usage block and exit."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message}; see {self.prog} --help")

    def parse_flags(self, argv: Sequence[str] | None) -> dict[str, Any]:
        try:
            flags, unknown = self.parse_known_args(argv)
        except argparse.ArgumentError as error:  # exit_on_error=False: a flag's value is wrong
            name, message = error.argument_name, error.message
            if name is None:
                self.error(message)
            if message == "expected one argument":  # argparse takes -1e-4 for an option
                message = f"needs a value; write {name}=VALUE for a value that starts with -"
            raise UserError(f"{name} {message}") from None
        if unknown:
            self.error(self._unknown(unknown))
        return vars(flags)

    def _unknown(self, unknown: list[str]) -> str:
        flag = next((arg for arg in unknown if arg.startswith("-")), None)
        if flag is None:
            return f"unexpected value {unknown[0]!r}: options are written --name value"
        flag = flag.split("=", 1)[0]
        names = [name for action in self._actions for name in action.option_strings]
        close = difflib.get_close_matches(flag, names, n=1)
        return f"unknown option {flag}" + (f" (did you mean {close[0]}?)" if close else "")


def _shown(value: Any) -> str:
    """A default as a user would write it: none, true, false, 0.002, out; '\\n' for a newline."""
    if value is None or isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str) and not (value.isprintable() and value.strip() == value != ""):
        return repr(value)
    return str(value)


def read_overrides(
    cls: type, argv: Sequence[str] | None, description: str, prog: str | None = None
) -> dict[str, Any]:
    """The options a user set: `--config FILE` (TOML or JSON), then `--key value` / `--key=value`
    flags, which win. Options left unset are absent, so that defaults can depend on the device
    or, on resume, come from the checkpoint.

    `--help` shows each field's help and default, and its GPU default where `cls` has
    `GPU_DEFAULTS` (the torch trainer's); a bool option alone (`--compile`) means true.
    """
    gpu_defaults = getattr(cls, "GPU_DEFAULTS", {})
    epilog = "Options come from the defaults, then --config FILE, then flags, which win."
    if gpu_defaults:
        epilog += " GPU: the default where --device resolves to a CUDA GPU."
    parser = _OptionParser(
        prog=prog,
        description=description,
        usage="%(prog)s [--config FILE] [--option VALUE ...]",
        epilog=epilog,
        exit_on_error=False,
        # one line per option, unwrapped (`--help | grep GPU`), after the longest flag
        formatter_class=lambda prog: argparse.RawTextHelpFormatter(prog, max_help_position=40),
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help="a TOML or JSON file of options: a flat table of the names below",
    )
    hints = typing.get_type_hints(cls)
    for field in fields(cls):
        annotation = hints[field.name]
        default = f"default: {_shown(field.default)}"
        if gpu_defaults.get(field.name, field.default) != field.default:
            default += f"; GPU: {_shown(gpu_defaults[field.name])}"
        line = " ".join(filter(None, [field.metadata.get("help"), f"({default})"]))
        kind = _optional_inner(annotation) or annotation
        parser.add_argument(
            f"--{field.name}",
            type=_parser_for(annotation),
            default=argparse.SUPPRESS,
            metavar=_KINDS[kind][2],
            help=line.replace("%", "%%"),  # argparse formats help with %
            **({"nargs": "?", "const": True} if kind is bool else {}),
        )
    flags = parser.parse_flags(argv)
    config_file = flags.pop("config")
    from_file = read_config_file(cls, config_file) if config_file is not None else {}
    return {**from_file, **flags}


def parse_config(
    cls: type, argv: Sequence[str] | None, description: str, prog: str | None = None
) -> Any:
    """Build `cls` (an options dataclass) from a config file and flags over its defaults."""
    return cls(**read_overrides(cls, argv, description, prog))


def run_main(main: Callable[[], None]) -> None:
    """Run a command-line program: errors a user can cause end in one line and exit code 2;
    a run that fails (diverges) ends in one line and exit code 1. Any other exception is a bug
    and keeps its traceback."""
    try:
        main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except TrainingFailed as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
