"""What jsonargparse says about a bad config or argument, as one line a user can act on.

jsonargparse explains unknown keys and wrong types well, but over several lines, and an
unknown key inside a class's arguments (``--data.init_args.batchsize``) comes wrapped in the
errors of every type the value could have had. :func:`config_problem` joins the message into
one line, cuts such a wrapper down to the class and the key it rejects (or, for a value of the
wrong type, to the type expected and the value given), and adds "did you mean" when a known
key is close to the unknown one - or, for a key that moved, its new name.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from typing import Any

#: Keys that moved, by their old name: the callbacks' options became their config groups.
#: softcal.apps.command_line rewrites the old command-line spellings; a config file that uses
#: an old key is told the new one.
MOVED_KEYS = {
    "calibrate": "calibration.enabled",
    "calibrator": "calibration.method",
    "figures": "figures.enabled",
}

_UNRECOGNIZED = re.compile(r"unrecognized arguments: (.*)")
_GROUP_OPTION = re.compile(r"Group '([\w.]+)' does not accept option '(\w+)'")
_OPTION = re.compile(r"Option '(\w+)' is not accepted")
_PARSER_KEY = re.compile(r'^Parser key "([\w.]+)":')
_CLASS_PATH = re.compile(r"class_path[ =]'([\w.]+)'")
#: A class argument's own message inside the wrapper of a Union (``--data.batch_size x``).
_CLASS_KEY = re.compile(r"class_path '([\w.]+)': Parser key \"(\w+)\": (.*)")
_SIMPLE_TYPE = re.compile(r"^Expected a <class '([\w.]+)'>\. Got value: (.*?)(?: - |$)")
_UNION_TYPES = re.compile(r"^Does not validate against any of the Union subtypes Subtypes: \[([^\]]*)\]")
_GIVEN = re.compile(r"Given value: (.*?)(?: - |$)")


def config_problem(err: BaseException, parser: Any = None, limit: int | None = None) -> str:
    """``err``'s message on one line (at most ``limit`` characters), an unknown key's class
    named and the closest known key suggested; ``parser``: the parser that raised it, whose
    keys are the candidates."""
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    text = text or type(err).__name__
    key, option, class_path = (_PARSER_KEY.search(text), _OPTION.search(text), _CLASS_PATH.search(text))
    if key and option and class_path:  # 'Parser key "data": Does not validate against any ...'
        name = option.group(1)
        text = f'Parser key "{key.group(1)}": {class_path.group(1)} does not accept option {name!r}'
        text += _hint(_closest(name, _class_options(class_path.group(1))))
    elif key and (wrong := _wrong_type(text[key.end() :].strip())):
        text = f'Parser key "{key.group(1)}": {wrong}'
    elif found := _UNRECOGNIZED.search(text):  # on the command line
        known = [f"--{key}" for key in _keys(parser)]
        names = [arg.split("=", 1)[0] for arg in found.group(1).split() if arg.startswith("--")]
        text += _hint(next((match for name in names if (match := _closest(name, known))), None))
    elif found := _GROUP_OPTION.search(text):  # in a config file, inside a section
        group, option = found.groups()
        inside = [key[len(group) + 1 :] for key in _keys(parser) if key.startswith(group + ".")]
        match = _closest(option, inside)
        text += _hint(f"{group}.{match}" if match else None)
    elif option:  # in a config file, at the top
        name = option.group(1)
        text += _hint(MOVED_KEYS.get(name) or _closest(name, [k.split(".")[0] for k in _keys(parser)]))
    return text if limit is None else text[:limit]


def _wrong_type(text: str) -> str | None:
    """A value of the wrong type as "expects int or null, got 'x'", without the errors of every
    other type a Union would have taken (for a class's argument: the class and the option);
    None when ``text`` is no such message."""
    if inner := _CLASS_KEY.search(text):
        class_path, name, detail = inner.groups()
        expected = _expected(detail)
        return f"{class_path} option {name!r} {expected}" if expected else None
    return _expected(text)


def _expected(text: str) -> str | None:
    if simple := _SIMPLE_TYPE.match(text):
        return f"expects {simple.group(1).rpartition('.')[2]}, got {simple.group(2)!r}"
    union, given = _UNION_TYPES.match(text), _GIVEN.search(text)
    if not (union and given):
        return None
    names = [name.rpartition(".")[2] for name in re.findall(r"<class '([\w.]+)'>", union.group(1))]
    return f"expects {' or '.join('null' if n == 'NoneType' else n for n in names)}, got {given.group(1)!r}"


def _closest(name: str, known: Iterable[str]) -> str | None:
    """The known key most like ``name`` (a typo's likely target), or None: none is close."""
    close = difflib.get_close_matches(name, sorted(set(known)), n=1, cutoff=0.7)
    return close[0] if close else None


def _hint(suggestion: str | None) -> str:
    return f" (did you mean {suggestion}?)" if suggestion else ""


def _keys(parser: Any) -> list[str]:
    """The dotted keys ``parser`` accepts (``model.lr``, ``data``, ``calibration.method``)."""
    actions = getattr(parser, "_actions", None) or []
    return [a.dest for a in actions if isinstance(getattr(a, "dest", None), str) and a.dest != "help"]


def _class_options(class_path: str) -> list[str]:
    """The init arguments a class takes (its parents' too, where it passes ``**kwargs`` on),
    as jsonargparse reads them; none when the class cannot be imported."""
    import importlib

    from jsonargparse import ArgumentParser

    module, _, name = class_path.rpartition(".")
    try:
        parser = ArgumentParser()
        parser.add_class_arguments(getattr(importlib.import_module(module), name), fail_untyped=False)
    except Exception:  # the class named in the message is gone or odd: no suggestion, no crash
        return []
    return _keys(parser)
