"""Plain text (.txt: each non-blank line) and SubRip subtitles (.srt: each cue's text; numbers
and timings kept)."""

from __future__ import annotations

import re

from service.errors import bad_request
from service.formats.base import Format, Job, Limits, Translate


async def translate_txt(job: Job) -> bytes:
    return "\n".join(await _lines(job.text().split("\n"), job, job.limits)).encode()


async def translate_srt(job: Job) -> bytes:
    async def translate(texts: list[str]) -> list[str]:
        return await job.translate_as(texts, False)

    return (await _srt(job.text(), translate, job.limits)).encode()


async def _lines(lines: list[str], job: Job, limits: Limits) -> list[str]:
    """Each non-blank line translated (its leading and trailing whitespace kept)."""
    limits.check([line for line in lines if line.strip()])
    return await job.plain(lines)


_TIMING = re.compile(r"^\d{1,2}:\d{2}:\d{2}[,.]\d{1,3}\s*-->\s*\d{1,2}:\d{2}:\d{2}[,.]\d{1,3}")


async def _srt(text: str, translate: Translate, limits: Limits) -> str:
    """Subtitles: numbers and timing lines kept; each cue's text lines translated as one text
    (a sentence often runs over two lines), its line count kept where the translation allows."""
    blocks = re.split(r"(\r?\n\r?\n+)", text.replace("\r\n", "\n"))
    cues: list[tuple[int, int]] = []  # (block, first text line)
    parsed = []
    for b, block in enumerate(blocks):
        lines = block.split("\n")
        timing = next((k for k, line in enumerate(lines[:2]) if _TIMING.match(line.strip())), None)
        if b % 2 == 0 and timing is not None:
            cues.append((b, timing + 1))
        elif b % 2 == 0 and block.strip():
            raise bad_request("not a SubRip (.srt) file: a block without a timing line")
        parsed.append(lines)
    texts = [" ".join(parsed[b][first:]).strip() for b, first in cues]
    limits.check(texts)
    done = await translate(texts) if texts else []
    for (b, first), tr in zip(cues, done):
        lines = parsed[b]
        body = [line for line in lines[first:] if line.strip()]
        tail = lines[first + len(_rstrip_lines(lines[first:])) :]  # blank lines after the text stay
        # a cue needs text: an empty translation keeps the source's lines
        parsed[b] = lines[:first] + (_wrap(tr, max(1, len(body))) if tr.strip() else body) + tail
    return "".join("\n".join(lines) if k % 2 == 0 else blocks[k] for k, lines in enumerate(parsed))


def _rstrip_lines(lines: list[str]) -> list[str]:
    """`lines` without the blank lines at their end."""
    end = len(lines)
    while end and not lines[end - 1].strip():
        end -= 1
    return lines[:end]


def _wrap(text: str, lines: int) -> list[str]:
    """`text` in `lines` lines of about equal length, broken at spaces."""
    if lines <= 1 or " " not in text:
        return [text]
    words, target = text.split(" "), len(text) / lines
    out: list[str] = []
    current = ""
    for w in words:
        if current and len(current) + 1 + len(w) > target and len(out) < lines - 1:
            out.append(current)
            current = w
        else:
            current = f"{current} {w}" if current else w
    return [*out, current]


FORMATS = [
    Format((".txt",), ("text/plain",), "plain text: each line", translate_txt),
    Format((".srt",), ("application/x-subrip",), "SubRip subtitles: numbers and timings kept", translate_srt),
]
