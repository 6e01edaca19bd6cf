"""Corpora: reading, downloading with checksums, length filtering and token-based batching.

Parallel corpora are plain text, one sentence per line, aligned by line number across
``<dir>/<split>.<lang>[.gz]``. Classification data is a TSV ``sentence<TAB>label`` with a
header. Nothing is copied: the job reads from a configurable directory (``data.dir``).
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import random
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.runtime.bundle import sha256_file, tag_source

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Corpus:
    """Where a corpus comes from, under which license, and the sha256 of each file (as stored)."""

    url: str  # base URL; a file's address is url + remote name
    license: str
    files: dict[str, str]  # local file name -> sha256 of the file as served
    remote_names: dict[str, str] = field(default_factory=dict)  # local name -> remote name
    gzip_locally: bool = False  # the remote file is plain text: gzip it (mtime 0) after checking
    # Turns the verified downloads in a folder into the files the job reads; None = used as is.
    build: Callable[[Path], list[Path]] | None = None


_M30K = "https://raw.githubusercontent.com/multi30k/dataset/a3d2e0d26b56f3846f66a952536ffed4e401d05a/data/task1/raw/"

CORPORA: dict[str, Corpus] = {
    "multi30k": Corpus(
        url=_M30K,
        license="Multi30k: research and educational, non-commercial use (Flickr30K terms); cite Elliott et al. 2016",
        files={
            "train.de.gz": "726e39b2fa9eb9ffb6dc763fb35a179f80fae06ffc5d28b6ace5faa883de28a6",
            "train.en.gz": "d79cfa999dd4c51d2cb42499b6796d5a882c3a8a961923c25a898c90f8bbd56f",
            "train.fr.gz": "622e75069e9f4c577425c4f277116ce66e63a2401c0a2312d90073cb12379a3c",
            "train.cs.gz": "a65adb8b32e3bc664f21ecba7a6e7f6950fd1f405e135f7c312faabdb6255077",
            "val.de.gz": "f0cba2f995189cf5770f29a8a9a537a3ad3f51657ad873405082ff6863a5e75a",
            "val.en.gz": "14f7d25ddd868909a9213e361768460edcacdd6ab9d1e77b92560dc10c10dc28",
            "val.fr.gz": "ca3106f1a72390591d25f6c45cb4cd39dec4cd3f123e099748a3ce5256c160e9",
            "val.cs.gz": "b63226e05c4bd5dd6a42897d74b86a1b9d2c31498252c572b1ea7f7996927fcc",
            "test_2016_flickr.de.gz": "9204244e408ccb38d2a55cfcd344df15005fc42a07a6e55ca6c52b6ababb8cc8",
            "test_2016_flickr.en.gz": "611d361c6334bc7246101d48097c13cf5c4413c5befc793cc629934359d532d9",
            "test_2016_flickr.fr.gz": "6d326e188d259fb1d04ac19eae3af956559b3a0b93d7635e56c90987c40c8b90",
            "test_2016_flickr.cs.gz": "200a4a74cc9560f051924abb9803be008d1908d77f747e9141aeb86dfd2797f1",
            "test_2017_flickr.de.gz": "a2c89666db00c495cd8513b9d708d5a3acc205d7de312ef2bf5fb7ebc1540aee",
            "test_2017_flickr.en.gz": "76a444ee25172e72695cddb13ae4a3bda59430617be88e0bb46b60504f054074",
            "test_2017_flickr.fr.gz": "3ba671ceb2299f3304ffafefea7a833d08632fbaf0ba18546f8a2ec2391af496",
        },
    ),
    "sst2": Corpus(
        url="https://raw.githubusercontent.com/eyalbd2/Reproducing-AutoPrompt/"
        "6288fb5bec9c572f2492875ae0111df5b6daed11/glue_data/SST-2/",
        license="SST-2 (Socher et al. 2013, via GLUE): research use",
        # The remote files are plain TSV; these are the sha256 of the decompressed text.
        files={
            "train.tsv.gz": "48eac26399f8456935f81dd9e3a745c1430adb6c62e233ccfe22db4a0d15d1d1",
            "dev.tsv.gz": "54a9c12c77e402fc14d6a66a506f24d999f596b0176eb777c972cccc2f9cc4b0",
        },
        remote_names={"train.tsv.gz": "train_full.tsv", "dev.tsv.gz": "dev.tsv"},
        gzip_locally=True,
    ),
    "zh-en": Corpus(
        url="https://raw.githubusercontent.com/13luoyu/Transformer-machine-translation/"
        "aa43963320ccfacebd1d3542deae559bbca58d03/",
        license="Tatoeba cmn-eng via ManyThings.org: CC BY 2.0 FR (attribution per line)",
        # The ManyThings Anki export; the splits are rebuilt from it (see build_tatoeba_zh_en).
        files={"cmn.txt": "aa264a2447b26ab7c9d413f8321f9e2a779fd134b5118306b6e26a3499b3926e"},
        build=lambda dest: build_tatoeba_zh_en(dest / "cmn.txt", dest),
    ),
    "chnsenticorp": Corpus(
        url="",
        license="ChnSentiCorp (Baidu LUGE agreement): non-commercial research or teaching only",
        files={},
    ),
}


def download(corpus: str, dest: Path, force: bool = False) -> list[Path]:
    """Fetch a corpus's files from their public source into `dest`, verifying sha256.

    A file already present with the right checksum is kept. A checksum mismatch deletes the
    download and raises, so a bad file never stays behind.
    """
    if corpus not in CORPORA or not CORPORA[corpus].files:
        known = sorted(k for k, c in CORPORA.items() if c.files)
        raise ValueError(f"no download source for corpus {corpus!r}; downloadable: {known}")
    spec = CORPORA[corpus]
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for name, expected in spec.files.items():
        target = dest / name
        if target.exists() and not force and _local_sha(target, spec) == expected:
            written.append(target)
            continue
        remote = spec.remote_names.get(name, name)
        log.info("downloading %s%s", spec.url, remote)
        tmp = target.with_suffix(target.suffix + ".part")
        payload = fetch(spec.url + remote)
        actual = hashlib.sha256(payload).hexdigest()
        if actual != expected:
            raise ValueError(f"{spec.url + remote}: sha256 {actual} != expected {expected}")
        if spec.gzip_locally:
            payload = gzip.compress(payload, mtime=0)
        tmp.write_bytes(payload)
        tmp.replace(target)
        written.append(target)
    return spec.build(dest) if spec.build else written


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as resp:
        return resp.read()


def build_tatoeba_zh_en(source: Path, dest: Path) -> list[Path]:
    """Rebuild ../shared/data/zh-en from ManyThings' cmn.txt (English<TAB>Chinese<TAB>attribution),
    following its README: drop empty lines, normalise whitespace, Chinese to simplified (OpenCC
    t2s, if the `opencc` package is installed: it changes 11 lines), drop duplicate pairs, then
    split without leakage: pairs sharing an English or a Chinese sentence form one component;
    components, ordered by sha256 of their smallest English sentence, fill test (2000 pairs) and
    then valid (1000); the rest is train. Pairs keep their source order within a split."""
    try:
        import opencc  # type: ignore[import-not-found]

        t2s = opencc.OpenCC("t2s").convert
    except ImportError:
        log.warning("opencc not installed: Chinese is not converted to simplified (11 lines differ)")

        def t2s(text: str) -> str:
            return text

    def norm(text: str) -> str:
        return " ".join(text.replace("\u3000", " ").replace("\u00a0", " ").split())

    pairs, seen = [], set()
    for line in source.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        en, zh, attribution = line.split("\t")
        pair = (norm(en), t2s(norm(zh)), attribution)
        if pair[:2] not in seen:
            seen.add(pair[:2])
            pairs.append(pair)
    parent = list(range(len(pairs)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[tuple[int, str], int] = {}
    for i, (en, zh, _) in enumerate(pairs):
        for key in ((0, en), (1, zh)):
            if key in first:
                parent[find(i)] = find(first[key])
            else:
                first[key] = i
    components: dict[int, list[int]] = {}
    for i in range(len(pairs)):
        components.setdefault(find(i), []).append(i)
    ordered = sorted(
        components.values(), key=lambda c: hashlib.sha256(min(pairs[i][0] for i in c).encode()).hexdigest()
    )
    split_of: dict[int, str] = {}
    for split, size in (("test", 2000), ("valid", 1000)):
        filled = 0
        for comp in ordered:
            if comp[0] in split_of or filled + len(comp) > size:
                continue
            for i in comp:
                split_of[i] = split
            filled += len(comp)
    written = []
    for split in ("train", "valid", "test"):
        rows = [p for i, p in enumerate(pairs) if split_of.get(i, "train") == split]
        for col, suffix in ((0, "en"), (1, "zh"), (2, "attribution")):
            path = dest / f"{split}.{suffix}.gz"
            write_lines(path, [r[col] for r in rows])
            written.append(path)
    return written


def _local_sha(path: Path, spec: Corpus) -> str:
    if spec.gzip_locally:
        with gzip.open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    return sha256_file(path)


def open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")


def read_lines(path: Path) -> list[str]:
    with open_text(path) as f:
        return [line.strip() for line in f]


def write_lines(path: Path, lines: Sequence[str]) -> None:
    """One text a line, gzip without a timestamp (the same bytes for the same lines)."""
    with path.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        gz.write(("\n".join(lines) + "\n").encode("utf-8"))


def find_split_file(data_dir: Path, split: str, lang: str) -> Path:
    for name in (f"{split}.{lang}.gz", f"{split}.{lang}"):
        if (data_dir / name).exists():
            return data_dir / name
    raise FileNotFoundError(f"no {split}.{lang}[.gz] in {data_dir}")


def load_parallel(data_dir: Path, split: str, src: str, tgt: str) -> list[tuple[str, str]]:
    sources = read_lines(find_split_file(data_dir, split, src))
    targets = read_lines(find_split_file(data_dir, split, tgt))
    if len(sources) != len(targets):
        raise ValueError(f"{data_dir}/{split}: {len(sources)} {src} lines but {len(targets)} {tgt} lines")
    return list(zip(sources, targets))


@dataclass(frozen=True)
class ParallelSet:
    """One line of data.train_sets / data.valid_sets:
    ``a-b DIR SPLIT [repeat=N] [limit=N] [only=SRC,SRC] [drop=SRC,SRC] [into=LANG]``.

    ``only``/``drop`` keep or remove the pairs whose line in ``<SPLIT>.source[.gz]`` (one source
    name per line, as ../shared/data/l10n has) is one of the names: a corpus's sources can be
    weighted (the same set twice with different ``only`` and ``repeat``) or held apart. ``into``
    uses the set only in the direction into that language (back-translated pairs: synthetic
    sources, real targets)."""

    langs: tuple[str, str]
    dir: Path
    split: str
    repeat: int = 1
    limit: int = 0
    only: tuple[str, ...] = ()
    drop: tuple[str, ...] = ()
    into: str = ""

    @classmethod
    def parse(cls, spec: str) -> ParallelSet:
        fields = spec.split()
        if len(fields) < 3 or fields[0].count("-") != 1:
            raise ValueError(
                f"parallel set {spec!r} must look like 'de-en DIR SPLIT [repeat=N] [limit=N] [only=A,B] [drop=A,B]'"
            )
        a, b = fields[0].split("-")
        options: dict[str, Any] = {}
        for opt in fields[3:]:
            key, _, value = opt.partition("=")
            if key in ("repeat", "limit") and value.isdigit():
                options[key] = int(value)
            elif key in ("only", "drop") and value:
                options[key] = tuple(v for v in value.split(",") if v)
            elif key == "into" and value in (a, b):
                options[key] = value
            else:
                raise ValueError(
                    f"parallel set {spec!r}: unknown option {opt!r} "
                    "(repeat=N, limit=N, only=A,B, drop=A,B, into=LANG of the pair)"
                )
        return cls((a, b), Path(fields[1]), fields[2], **options)

    def load(self) -> list[tuple[str, str]]:
        """The set's non-empty pairs in file order, source-filtered, then limited (not repeated)."""
        pairs = load_parallel(self.dir, self.split, *self.langs)
        keep = [bool(s and t) for s, t in pairs]
        if self.only or self.drop:
            names = read_lines(find_split_file(self.dir, self.split, "source"))
            if len(names) != len(pairs):
                raise ValueError(f"{self.dir}/{self.split}: {len(names)} source names for {len(pairs)} pairs")
            unknown = sorted(set(self.only + self.drop) - set(names))
            if unknown:
                raise ValueError(
                    f"{self.dir}/{self.split}: no pairs from source(s) {unknown}; it has {sorted(set(names))}"
                )
            keep = [k and (not self.only or n in self.only) and n not in self.drop for k, n in zip(keep, names)]
        kept = [p for p, k in zip(pairs, keep) if k]
        return kept[: self.limit] if self.limit else kept


def load_directions(sets: Sequence[str], directions: Sequence[str], tags: bool) -> list[tuple[str, str, str]]:
    """(source, target, direction) rows of every set in every listed direction between its two
    languages; the source carries its target's tag when `tags`. A set matching no direction
    is an error (a typo would silently drop data)."""
    wanted = [tuple(d.split("-")) for d in directions]
    rows: list[tuple[str, str, str]] = []
    for spec in sets:
        ps = ParallelSet.parse(spec)
        used = [(s, t) for s, t in wanted if {s, t} == set(ps.langs) and ps.into in ("", t)]
        if not used:
            raise ValueError(f"parallel set {spec!r} matches none of the directions {list(directions)}")
        pairs = ps.load()
        for s, t in used:
            oriented = pairs if (s, t) == ps.langs else [(b, a) for a, b in pairs]
            for src, tgt in oriented * ps.repeat:
                rows.append((tag_source(src, t) if tags else src, tgt, f"{s}-{t}"))
    return rows


def load_tsv(path: Path, labels: Sequence[str], aliases: Sequence[str] = ()) -> list[tuple[str, int]]:
    """Rows of a `sentence<TAB>label` TSV with a header. Labels may be written as their index
    (0, 1, ...), their name from `labels`, or a name that `aliases` (``file_label=label``) maps
    to one (e.g. Tatoeba's ``deu=de``)."""
    index = {name: i for i, name in enumerate(labels)} | {str(i): i for i in range(len(labels))}
    for alias in aliases:
        raw, _, name = alias.partition("=")
        if name not in labels:
            raise ValueError(f"label alias {alias!r}: {name!r} is not in labels")
        index[raw] = labels.index(name)
    rows = []
    with open_text(path) as f:
        header = f.readline().rstrip("\n").split("\t")
        if header[:2] != ["sentence", "label"]:
            raise ValueError(f"{path}: header {header} is not ['sentence', 'label']")
        for n, line in enumerate(f, start=2):
            line = line.rstrip("\n")
            if not line:
                continue
            text, _, label = line.rpartition("\t")
            if label not in index:
                raise ValueError(f"{path}:{n}: label {label!r} not in {list(labels)}")
            rows.append((text.strip(), index[label]))
    return rows


def load_langid(sources: Sequence[str], labels: Sequence[str], split: str) -> list[tuple[str, int]]:
    """Monolingual sentences labelled by language. Each source is ``lang=dir`` (``dir`` holds
    ``<split>.<lang>[.gz]``); a language may appear in several sources. For ``split`` names
    that a corpus lacks (e.g. ``valid`` vs ``val``), the aliases below are tried."""
    aliases = {"valid": ("valid", "val", "dev"), "train": ("train",)}
    rows = []
    for spec in sources:
        lang, _, d = spec.partition("=")
        if lang not in labels:
            raise ValueError(f"langid source {spec!r}: {lang!r} is not in labels {list(labels)}")
        for name in aliases.get(split, (split,)):
            try:
                path = find_split_file(Path(d), name, lang)
            except FileNotFoundError:
                continue
            rows += [(line, labels.index(lang)) for line in read_lines(path) if line]
            break
        else:
            raise FileNotFoundError(f"langid source {spec!r}: no {split} split for {lang}")
    return rows


def _is_cjk(text: str) -> bool:
    return any("\u3400" <= ch <= "\u9fff" for ch in text)


def short_spans(rows: Sequence[tuple[str, int]], seed: int) -> list[tuple[str, int]]:
    """One short span per row: 1-3 words, or 1-4 characters of text written without spaces
    (Chinese). Language identifiers usually fail on such inputs; we train and test on them."""
    rng = random.Random(seed)
    out = []
    for text, label in rows:
        if _is_cjk(text):
            chars = [c for c in text if not c.isspace()]
            n = min(len(chars), rng.randint(1, 4))
            start = rng.randint(0, len(chars) - n)
            span = "".join(chars[start : start + n])
        else:
            words = text.split()
            n = min(len(words), rng.randint(1, 3))
            start = rng.randint(0, len(words) - n)
            span = " ".join(words[start : start + n])
        if span:
            out.append((span, label))
    return out


def token_batches(
    lengths: Sequence[int], max_tokens: int, seed: int, epoch: int, shuffle: bool = True
) -> list[list[int]]:
    """Group example indices into batches of at most `max_tokens` padded tokens.

    Examples are sorted by length (ties broken by a seeded shuffle) so that a batch holds
    sentences of similar length and little padding; then the batch order is shuffled. The same
    (seed, epoch) always gives the same batches, which makes resuming exact.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    if shuffle:
        rng.shuffle(order)
    order.sort(key=lambda i: lengths[i])
    batches, current, longest = [], [], 0
    for i in order:
        new_longest = max(longest, lengths[i])
        if current and new_longest * (len(current) + 1) > max_tokens:
            batches.append(current)
            current, new_longest = [], lengths[i]
        current.append(i)
        longest = new_longest
    if current:
        batches.append(current)
    if shuffle:
        rng.shuffle(batches)
    return batches
