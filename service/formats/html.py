"""HTML pages (.html): the whole page through `format: "html"`'s path (service/html.py): the
text of each block translated, the markup kept."""

from __future__ import annotations

from service.formats.base import Format, Job


async def translate_html(job: Job) -> bytes:
    text = job.text()
    job.limits.check([text])
    (page,) = await job.translate_as([text], True)
    return page.encode()


FORMATS = [Format((".html",), ("text/html",), "HTML page: markup kept", translate_html)]
