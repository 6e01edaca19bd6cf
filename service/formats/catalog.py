"""JSON message catalogues (.json): every string value translated, keys, structure and every
other value kept; flat or nested objects and arrays (i18next, vue-i18n, Angular, ...), Chrome's
`messages.json` (only each message's `message`: its `description` and `placeholders` are for
translators and the code), Flutter's ARB (`.arb`: `@key` metadata and `@@` globals kept, but
`@@locale` set to the target where the route names it). Placeholders (`{name}`, `{{count}}`,
`%s`, ICU plurals, `$t(key)`) are kept by the translation pipeline (service/protect.py).
Written back with the source's indentation (or none), key order and final line break; non-ASCII
written as UTF-8, not escaped."""

from __future__ import annotations

import json
import re
from typing import Any

from service.errors import bad_request
from service.formats.base import Format, Job

Path = tuple[Any, ...]  # keys and indexes from the top to a value


def _read(job: Job) -> Any:
    text = job.text()
    try:
        return json.loads(text)
    except RecursionError:  # nested deeper than the parser goes
        raise bad_request(f"{job.ext} file is nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise bad_request(f"not a valid {job.ext} file (JSON error at line {exc.lineno} column {exc.colno})") from None
    except ValueError:  # e.g. an integer of more digits than Python converts (4300)
        raise bad_request(f"not a valid {job.ext} file (a number too long)") from None


def _chrome(data: Any) -> bool:
    """Chrome's messages.json: every value an object with a string `message`."""
    return (
        isinstance(data, dict)
        and bool(data)
        and all(isinstance(v, dict) and isinstance(v.get("message"), str) for v in data.values())
    )


def _strings(data: Any, ext: str, max_elements: int) -> list[tuple[Any, Any]]:
    """Where the strings to translate are: (their container, key or index), in document order;
    walked without recursion, at most `max_elements` values (beyond: 413)."""
    from service.errors import too_large

    chrome, arb = _chrome(data), ext == ".arb"
    found: list[tuple[Any, Any]] = []
    stack: list[tuple[Any, int]] = [(data, 0)]
    seen = 0
    while stack:
        node, depth = stack.pop()
        items = list(node.items()) if isinstance(node, dict) else list(enumerate(node))
        seen += len(items)
        if seen > max_elements:
            raise too_large(f"file has more than {max_elements} JSON values")
        children = []
        for key, value in items:
            metadata = arb and depth == 0 and isinstance(key, str) and key.startswith("@")  # ARB: "@key", "@@locale"
            if isinstance(key, str) and (metadata or (chrome and depth == 1 and key != "message")):
                continue
            if isinstance(value, str):
                found.append((node, key))
            elif isinstance(value, (dict, list)):
                children.append((value, depth + 1))
        stack += reversed(children)
    return found


def _indent(text: str) -> int | str | None:
    """The source's indentation: the white space before its second line's first value."""
    found = re.search(r"[\[{]\s*?\n([ \t]+)\S", text)
    if not found:
        return None
    return len(found.group(1)) if set(found.group(1)) == {" "} else found.group(1)


async def translate_catalog(job: Job) -> bytes:
    data = await job.offload(_read, job)
    if not isinstance(data, (dict, list)):
        raise bad_request(f"not a valid {job.ext} file (not a JSON object or array)")
    places = await job.offload(_strings, data, job.ext, job.limits.max_elements)
    texts = [container[key] for container, key in places]
    job.limits.check([t for t in texts if t.strip()])
    for (container, key), tr in zip(places, await job.plain(texts)):
        container[key] = tr
    if job.ext == ".arb" and job.target and isinstance(data, dict) and isinstance(data.get("@@locale"), str):
        data["@@locale"] = job.target
    source = job.text()
    indent = _indent(source)
    spaced = indent is not None or re.search(r'"\s*:\s', source)
    separators = (", " if indent is None and spaced else ",", ": " if spaced else ":")
    out = json.dumps(data, ensure_ascii=False, indent=indent, separators=separators)
    return (out + ("\n" if source.endswith("\n") else "")).encode()


FORMATS = [
    Format(
        (".json", ".arb"),
        ("application/json",),
        "JSON message catalogue (flat or nested; i18next, Chrome, ARB): values translated, keys and structure kept",
        translate_catalog,
    )
]
