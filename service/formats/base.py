"""What every file format shares: the limits on a file's work, the translate callback the route
gives, the job a format's handler gets, and the table entry (`Format`) each format module lists."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from service.errors import bad_request, too_large
from service.html import Offload

Translate = Callable[[list[str]], Awaitable[list[str]]]  # texts -> translations (same order)
# (texts, as HTML fragments?) -> translations: the route's translate, plain or markup
TranslateAs = Callable[[list[str], bool], Awaitable[list[str]]]


class Limits:
    def __init__(self, max_chars: int, max_units: int, max_elements: int) -> None:
        self.max_chars, self.max_units, self.max_elements = max_chars, max_units, max_elements

    def check(self, units: list[str]) -> None:
        self.check_counts(len(units), sum(len(u) for u in units))

    def check_counts(self, units: int, chars: int) -> None:
        """413 beyond `max_units` paragraphs or `max_chars` characters of text to translate."""
        if units > self.max_units:
            raise too_large(f"file has {units} paragraphs; at most {self.max_units}")
        if chars > self.max_chars:
            raise too_large(f"file has {chars} characters of text; at most {self.max_chars}")

    def elements(self, count: int, what: str) -> None:
        """413 when a file holds more than `max_elements` of its structure (`what`, plural)."""
        if count > self.max_elements:
            raise too_large(f"file has more than {self.max_elements} {what}")


@dataclass
class Job:
    """One upload to translate: its bytes and extension (lower case, with the dot), the route's
    translate, the file's limits, `offload(function, *args)` (the file job's thread: parsing
    and writing run there, never on the event loop) and the target language where known."""

    data: bytes
    ext: str
    translate_as: TranslateAs
    limits: Limits
    offload: Offload
    target: str | None = None

    async def plain(self, texts: list[str]) -> list[str]:
        """`texts` translated as plain text, each one's leading and trailing white space kept
        (a blank one comes back as it is)."""
        todo = [k for k, t in enumerate(texts) if t.strip()]
        done = await self.translate_as([texts[k].strip() for k in todo], False) if todo else []
        out = list(texts)
        for k, tr in zip(todo, done):
            t = texts[k]
            out[k] = t[: len(t) - len(t.lstrip())] + tr + t[len(t.rstrip()) :]
        return out

    def text(self) -> str:
        """The upload as UTF-8 text (a byte order mark dropped); 400 when it is not."""
        try:
            return self.data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise bad_request(f"{self.ext} file is not UTF-8 text") from None


@dataclass(frozen=True)
class Format:
    """A row of the formats table: the extensions and media types of a file format, what it is
    (for the OpenAPI document), and its handler: the translated file's bytes from a `Job`."""

    extensions: tuple[str, ...]
    media_types: tuple[str, ...]
    name: str
    translate: Callable[[Job], Awaitable[bytes]]
