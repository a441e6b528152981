"""Fuzz the parser: mutated real PDFs through the isolated parse path that ingestion uses.

The case generators and the driver that `python -m bench.fuzz` (the 10,000-case run of
RELIABILITY.md) and tests/reliability/test_fuzz.py share.

Each case takes a strategy (round robin), a seed PDF and a variant of it, mutates the bytes
deterministically from (seed, case number), and parses the result with ingest's task
(`pipeline.ingestion.ingest.parse_in_worker`) in a `WorkerPool` under the parse deadline and
memory limit.
Every outcome must be one of: parsed; failed with a one-line reason naming the file; or a timeout,
crash or memory kill confined to the worker. Anything that goes wrong in this process, and any
reason that is not one line naming the file, is counted as a problem (the run never stops for it).

Seeds are the PDFs in the shared data folder's pdfs/papers and pdfs/robustness, cut once to
their first pages so that 10,000 cases fit in about an hour on one core.
"""

from __future__ import annotations

import functools
import hashlib
import random
import re
import shutil
import tempfile
import time
import traceback
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import IngestConfig, OcrMode, ParseConfig
from pipeline.ingestion.ingest import init_parse_worker, parse_failure, parse_in_worker
from pipeline.ingestion.isolation import TaskStatus, WorkerPool
from pipeline.ingestion.parse import ParsedDocument

Mutator = Callable[[bytes, random.Random], bytes]

# ------------------------------------------------------------------------------------ seeds


@dataclass(frozen=True)
class Seed:
    name: str
    variants: dict[str, bytes]  # "orig": the (cut) file; "objstm": with object streams; "plain": uncompressed


def prepare_seeds(data_dir: Path, pages: int = 2, plain_max_bytes: int = 4 << 20) -> list[Seed]:
    """Read the seed PDFs; cut long ones to their first `pages` pages and add re-saved variants.

    Only the seeds (trusted files) are opened here; mutated bytes are only ever parsed in workers.
    """
    import pymupdf

    files = sorted((data_dir / "pdfs" / "papers").glob("*.pdf")) + sorted(
        (data_dir / "pdfs" / "robustness").glob("*.pdf")
    )
    if not files:
        raise FileNotFoundError(f"no seed PDFs under {data_dir / 'pdfs'} (set FOLIO_SHARED_DATA)")
    seeds = []
    for path in files:
        original = path.read_bytes()
        variants = {"orig": original}
        try:
            doc = pymupdf.open(path)
        except (pymupdf.FileDataError, RuntimeError, ValueError):
            doc = None  # empty or broken seeds are mutated as they are
        if doc is not None and not doc.needs_pass and doc.page_count > 0:
            if doc.page_count > pages:
                doc.select(range(pages))
                variants["orig"] = doc.tobytes(garbage=3, deflate=True)
            variants["objstm"] = doc.tobytes(garbage=3, deflate=True, use_objstms=1)
            plain = doc.tobytes(garbage=3, expand=255)
            if len(plain) <= plain_max_bytes:
                variants["plain"] = plain
        if doc is not None:
            doc.close()
        seeds.append(Seed(path.name, variants))
    return seeds


# --------------------------------------------------------------------------------- mutators
# One function per strategy: (bytes, seeded Random) -> bytes, deterministic for a given Random.

_EXTREMES = [b"0", b"-1", b"2147483647", b"4294967296", b"-2147483649", b"1e38", b"99999999999999999999",
             b"0.0000001", b"3.4e39", b"-0", b"65535", b"100000"]


def byte_flip(data: bytes, rng: random.Random) -> bytes:
    """Flip bits or overwrite bytes at random places (1 to 128 of them)."""
    buf = bytearray(data or b"%PDF-1.7\n")
    for _ in range(rng.choice([1, 2, 4, 8, 32, 128])):
        i = rng.randrange(len(buf))
        buf[i] = buf[i] ^ (1 << rng.randrange(8)) if rng.random() < 0.5 else rng.randrange(256)
    return bytes(buf)


def truncate(data: bytes, rng: random.Random) -> bytes:
    """Cut the file anywhere, near its end (the xref and trailer) or near its start."""
    n = len(data)
    cut = rng.choice([rng.randrange(n + 1), n - rng.randrange(min(n, 4096) + 1), rng.randrange(min(n, 4096) + 1)])
    return data[:cut]


def xref_damage(data: bytes, rng: random.Random) -> bytes:
    """Break the cross-reference data: startxref, xref entries, trailer keys."""
    choice = rng.randrange(4)
    if choice == 0:  # startxref points anywhere
        value = rng.choice([b"0", b"1", str(rng.randrange(max(1, len(data)))).encode(), b"99999999999"])
        return re.sub(rb"startxref\s+\d+", b"startxref\n" + value, data)
    if choice == 1:  # table entries shifted, zeroed, or marked free
        def entry(m: re.Match) -> bytes:
            if rng.random() < 0.3:
                return rng.choice([b"%010d 00000 n" % rng.randrange(10**10), b"0000000000 65535 f",
                                   b"%010d 00000 n" % rng.randrange(max(1, len(data)))])
            return m.group(0)
        return re.sub(rb"\d{10} \d{5} [nf]", entry, data)
    if choice == 2:  # trailer: wrong /Size, /Root, /Prev
        key, value = rng.choice([(rb"/Size\s+\d+", b"/Size 2147483647"), (rb"/Root\s+\d+\s+\d+\s+R", b"/Root 1 0 R"),
                                 (rb"/Prev\s+\d+", b"/Prev 7"), (rb"/Size\s+\d+", b"/Size 0")])
        return re.sub(key, value, data)
    # keywords gone: MuPDF has to repair by scanning the whole file
    word = rng.choice([b"xref", b"trailer", b"startxref", b"endobj", b"endstream", b"obj"])
    return data.replace(word, b"x" * len(word), rng.choice([1, 3, -1]))


def objstm_damage(data: bytes, rng: random.Random) -> bytes:
    """Damage an object stream: its header (object numbers, offsets), /N, /First, or its objects."""
    streams = list(re.finditer(rb"<<[^<>]*/Type\s*/ObjStm[^<>]*>>\s*stream\r?\n", data))
    if not streams:
        return byte_flip(data, rng)
    m = rng.choice(streams)
    header, start = m.group(0), m.end()
    end = data.find(b"endstream", start)
    if end < 0:
        return byte_flip(data, rng)
    try:
        body = zlib.decompressobj().decompress(data[start:end], 64 << 20)
    except zlib.error:
        return byte_flip(data, rng)
    choice = rng.randrange(5)
    if choice == 0:  # the header's "num offset" pairs: shuffled or extreme offsets
        first = int(re.search(rb"/First\s+(\d+)", header).group(1)) if b"/First" in header else 0
        numbers = body[:first].split()
        for i in rng.sample(range(len(numbers)), min(len(numbers), rng.choice([1, 3, 10]))):
            numbers[i] = rng.choice(_EXTREMES + [numbers[rng.randrange(len(numbers))]])
        body = b" ".join(numbers) + b" " + body[first:]
    elif choice == 1:
        header = re.sub(rb"/N\s+\d+", b"/N " + rng.choice([b"0", b"-1", b"2147483647", b"100000"]), header)
    elif choice == 2:
        header = re.sub(rb"/First\s+\d+", b"/First " + rng.choice([b"0", b"1", b"99999999", b"-5"]), header)
    elif choice == 3:  # the objects inside: flipped bytes, or cut short
        body = byte_flip(body, rng) if rng.random() < 0.5 else body[: rng.randrange(len(body) + 1)]
    else:  # an object stream that extends itself (a cycle)
        number = re.search(rb"(\d+)\s+\d+\s+obj\s*$", data[max(0, m.start() - 40) : m.start()])
        if number:
            header = header.replace(b"/Type", b"/Extends %s 0 R /Type" % number.group(1), 1)
    packed = zlib.compress(body)
    if rng.random() < 0.8:
        header = re.sub(rb"/Length\s+\d+(\s+\d+\s+R)?", b"/Length %d" % len(packed), header)
    return data[: m.start()] + header + packed + b"\n" + data[end:]


def huge_page_count(data: bytes, rng: random.Random) -> bytes:
    """Claim or build a huge page tree: /Count lies, or one page listed thousands of times."""
    if rng.random() < 0.4:
        value = rng.choice([b"2147483647", b"1000000000", b"-1", b"6000", b"0"])
        return re.sub(rb"/Count\s+-?\d+", b"/Count " + value, data)
    page = _find_page(data)
    first = _next_number(data)
    repeat = rng.choice([60, 6000, 100_000, 1_000_000])
    objects: dict[int, bytes] = {}
    if page is None:
        page = first + 2
        objects[page] = b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 612 792] >>" % (first + 1)
    kids = b" ".join([b"%d 0 R" % page] * repeat)
    objects[first] = b"<< /Type /Catalog /Pages %d 0 R >>" % (first + 1)
    objects[first + 1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, repeat)
    return append_update(data, objects, root=first)


def deep_nesting(data: bytes, rng: random.Random) -> bytes:
    """Deeply nested arrays or dictionaries where the parser reads them, or a deep or cyclic page tree."""
    depth = rng.choice([100, 1000, 10_000, 100_000, 1_000_000])
    first = _next_number(data)
    choice = rng.randrange(5)
    objects: dict[int, bytes] = {first: b"<< /Type /Catalog /Pages %d 0 R >>" % (first + 1)}
    page = b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 612 792] %%s >>" % (first + 1)
    if choice == 0:  # nested arrays as the page's annotations
        objects[first + 2] = page % (b"/Annots " + b"[" * depth + b"]" * depth)
    elif choice == 1:  # nested dictionaries as the page's resources
        objects[first + 2] = page % (b"/Resources " + b"<< /A " * depth + b">> " * depth)
    elif choice == 2:  # nested graphics states and arrays in the content stream
        content = b"q " * depth + b"[" * min(depth, 10_000) + b"]" * min(depth, 10_000) + b" TJ " + b"Q " * depth
        objects[first + 3] = _stream(b"", content, compress=True)
        objects[first + 2] = page % (b"/Contents %d 0 R" % (first + 3))
    elif choice == 3:  # a chain of page-tree nodes, `depth` levels deep (capped: one object each)
        levels = min(depth, 20_000)
        for level in range(levels):
            number = first + 1 + level
            parent = b"/Parent %d 0 R " % (number - 1) if level else b""
            objects[number] = b"<< /Type /Pages %s/Kids [%d 0 R] /Count 1 >>" % (parent, number + 1)
        objects[first + 1 + levels] = b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 612 792] >>" % (first + levels)
        return append_update(data, objects, root=first)
    else:  # a page tree that contains itself
        objects[first + 1] = b"<< /Type /Pages /Kids [%d 0 R %d 0 R] /Count 2 >>" % (first + 2, first + 1)
        objects[first + 2] = page % b""
        return append_update(data, objects, root=first)
    objects[first + 1] = b"<< /Type /Pages /Kids [%d 0 R] /Count 1 >>" % (first + 2)
    return append_update(data, objects, root=first)


def decompression_bomb(data: bytes, rng: random.Random) -> bytes:
    """A page whose content stream or image inflates a tiny Flate stream ~1000x (~10^6x nested).

    Sizes are weighted towards the small end: inflating 1.6 GB alone takes several seconds.
    """
    first = _next_number(data)
    kind = rng.choice(["content", "image", "image", "double", "liar"])
    objects = {
        first: b"<< /Type /Catalog /Pages %d 0 R >>" % (first + 1),
        first + 1: b"<< /Type /Pages /Kids [%d 0 R] /Count 1 >>" % (first + 2),
    }
    draw = b"q 500 0 0 600 50 100 cm /Im0 Do Q"
    if kind == "content":  # millions of drawing operators
        megabytes = rng.choices([1, 4, 16], weights=[7, 2, 1])[0]
        objects[first + 3] = _stream(b"/Filter /FlateDecode", _zeros_flate(megabytes, b"0 0 m 9 9 l S\n"), compress=False)
        resources = b""
    else:
        side = rng.choices([8_000, 20_000, 40_000], weights=[6, 3, 1])[0] if kind != "liar" else 65_000
        if kind == "liar":  # declares a huge image, holds a few bytes
            image = _stream(b"/Filter /FlateDecode", zlib.compress(bytes(4096)), compress=False)
        elif kind == "double":  # Flate inside Flate: a 1:1,000,000 ratio
            image = _stream(b"/Filter [/FlateDecode /FlateDecode]", zlib.compress(_zeros_flate(side * side >> 20, b"\0")), compress=False)
        else:
            image = _stream(b"/Filter /FlateDecode", _zeros_flate(side * side >> 20, b"\0"), compress=False)
        dims = b"/Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceGray /BitsPerComponent 8 " % (side, side)
        objects[first + 4] = image.replace(b"<< ", b"<< " + dims, 1)
        objects[first + 3] = _stream(b"", draw, compress=True)
        resources = b"/Resources << /XObject << /Im0 %d 0 R >> >>" % (first + 4)
    objects[first + 2] = (
        b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 612 792] /Contents %d 0 R %s >>"
        % (first + 1, first + 3, resources)
    )
    return append_update(data, objects, root=first)


def number_extremes(data: bytes, rng: random.Random) -> bytes:
    """Replace numbers (sizes, lengths, coordinates, object numbers) with extreme values."""
    numbers = list(re.finditer(rb"(?<![\w.])-?\d+(\.\d+)?(?![\w.])", data[:4 << 20]))
    if not numbers:
        return byte_flip(data, rng)
    buf = bytearray(data)
    for m in sorted(rng.sample(numbers, min(len(numbers), rng.choice([1, 4, 16, 64]))), key=lambda m: -m.start()):
        buf[m.start() : m.end()] = rng.choice(_EXTREMES)
    return bytes(buf)


STRATEGIES: dict[str, Mutator] = {
    "byte_flip": byte_flip,
    "truncate": truncate,
    "xref_damage": xref_damage,
    "objstm_damage": objstm_damage,
    "huge_page_count": huge_page_count,
    "deep_nesting": deep_nesting,
    "decompression_bomb": decompression_bomb,
    "number_extremes": number_extremes,
}


def _find_page(data: bytes) -> int | None:
    m = re.search(rb"(\d+)\s+0\s+obj\s*<<(?:(?!endobj).){0,400}?/Type\s*/Page(?![a-zA-Z])", data, re.DOTALL)
    return int(m.group(1)) if m else None


def _next_number(data: bytes) -> int:
    """An object number above every one the file uses (new objects go there)."""
    sizes = [int(s) for s in re.findall(rb"/Size\s+(\d{1,9})", data)]
    numbers = [int(n) for n in re.findall(rb"(\d{1,9})\s+\d+\s+obj\b", data)]
    return max([*sizes, *numbers, 0]) + 1


def _stream(keys: bytes, payload: bytes, *, compress: bool) -> bytes:
    if compress:
        payload, keys = zlib.compress(payload), keys + b" /Filter /FlateDecode"
    return b"<< %s /Length %d >>\nstream\n%s\nendstream" % (keys, len(payload), payload)


@functools.lru_cache(maxsize=16)
def _zeros_flate(megabytes: int, unit: bytes) -> bytes:
    """`megabytes` MB of a repeated unit, Flate-compressed."""
    piece = (unit * ((1 << 20) // len(unit) + 1))[: 1 << 20]
    return repeated_flate(piece, megabytes)


def repeated_flate(piece: bytes, count: int) -> bytes:
    """A zlib stream of `piece` repeated `count` times, compressing `piece` only once.

    After a full flush the compressor forgets its history, so each repeat compresses to the same
    bytes: 4 GB of zeros take a second instead of a minute.
    """
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate: header and checksum added here
    block = packer.compress(piece) + packer.flush(zlib.Z_FULL_FLUSH)
    checksum = 1
    for _ in range(count):
        checksum = zlib.adler32(piece, checksum)
    return b"\x78\xda" + block * count + packer.flush() + checksum.to_bytes(4, "big")


def append_update(data: bytes, objects: dict[int, bytes], root: int) -> bytes:
    """Append objects as an incremental update whose trailer makes `root` the catalog."""
    out = bytearray(data if data.endswith(b"\n") else data + b"\n")
    offsets = {}
    for number in sorted(objects):
        offsets[number] = len(out)
        out += b"%d 0 obj\n%s\nendobj\n" % (number, objects[number])
    xref = len(out)
    out += b"xref\n"
    numbers = sorted(objects)
    run_start = numbers[0]
    for i, number in enumerate(numbers):  # subsections of consecutive object numbers
        if i == len(numbers) - 1 or numbers[i + 1] != number + 1:
            out += b"%d %d\n" % (run_start, number - run_start + 1)
            for n in range(run_start, number + 1):
                out += b"%010d 00000 n \n" % offsets[n]
            if i < len(numbers) - 1:
                run_start = numbers[i + 1]
    prev = re.findall(rb"startxref\s+(\d+)", data)
    prev_key = b" /Prev %s" % prev[-1] if prev else b""
    out += b"trailer\n<< /Size %d /Root %d 0 R%s >>\nstartxref\n%d\n%%%%EOF\n" % (max(numbers) + 1, root, prev_key, xref)
    return bytes(out)


# ------------------------------------------------------------------------------------ cases


@dataclass(frozen=True)
class Case:
    number: int
    strategy: str
    seed: str
    variant: str
    ocr: bool
    data: bytes

    @property
    def file_name(self) -> str:
        return f"c{self.number:05d}-{self.strategy}.pdf"


def make_case(number: int, seed: int, seeds: list[Seed], ocr_fraction: float) -> Case:
    """Case `number` of the run with `seed`: the same inputs always give the same bytes."""
    rng = random.Random(f"{seed}:{number}")
    strategy = list(STRATEGIES)[number % len(STRATEGIES)]
    source = rng.choice(seeds)
    if strategy == "objstm_damage" and "objstm" in source.variants:
        variant = "objstm"
    else:
        variant = rng.choice(sorted(source.variants))
    ocr = rng.random() < ocr_fraction
    data = STRATEGIES[strategy](source.variants[variant], rng)
    return Case(number, strategy, source.name, variant, ocr, data)


# ------------------------------------------------------------------------------------- runs


@dataclass
class Tally:
    cases: int = 0
    parsed: int = 0
    failed: int = 0  # a reason from the parser (ParseError), as ingest records it
    unexpected: int = 0  # of those, "unexpected parser error": an exception Folio did not handle
    timeouts: int = 0
    crashes: int = 0
    memory: int = 0
    task_errors: int = 0  # the task itself raised (ingest's task must always return)
    main_problems: int = 0  # anything that went wrong in this process (must be 0)
    bad_reasons: int = 0  # a reason that is not one line or does not name the file (must be 0)
    ocr_cases: int = 0
    parse_s: float = 0.0  # seconds the cases spent in workers, all together
    slowest_s: float = 0.0
    slowest_case: int = -1


def run(
    cases: int,
    seed: int,
    *,
    first: int = 0,
    workers: int = 1,
    timeout_s: float = 30.0,
    memory_mb: int | None = None,
    ocr_fraction: float = 0.01,
    data_dir: Path,
    seed_pages: int = 2,
    batch: int = 8,
    work: Path | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Run cases `first` .. `first + cases - 1` and return the report (see the module docstring).

    Args:
        data_dir: The shared data folder (seeds are its `pdfs/papers` and `pdfs/robustness`).
        work: Where each batch's files are written (a temporary folder under it; the system's
            temporary folder when None).
    """
    limits = IngestConfig(
        workers=workers,
        parse_timeout_s=timeout_s,
        parse_memory_mb=memory_mb if memory_mb is not None else IngestConfig().parse_memory_mb,
    )
    seeds = prepare_seeds(data_dir, pages=seed_pages)
    tallies = {name: Tally() for name in STRATEGIES}
    reasons: Counter[str] = Counter()
    notable: list[dict] = []  # unexpected errors, crashes, timeouts, problems: enough to reproduce
    started = time.perf_counter()
    if work is not None:
        work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work) as tmp, WorkerPool(
        parse_in_worker,
        workers=workers,
        timeout_s=limits.parse_timeout_s,
        memory_mb=limits.parse_memory_mb,
        initializer=init_parse_worker,
    ) as pool:
        folder = Path(tmp)
        for start in range(first, first + cases, batch):
            numbers = range(start, min(start + batch, first + cases))
            todo: dict[int, Case] = {}
            for number in numbers:
                try:
                    todo[number] = make_case(number, seed, seeds, ocr_fraction)
                except Exception as exc:  # noqa: BLE001 - a bug in a mutator is a problem of this process
                    _problem(tallies[list(STRATEGIES)[number % len(STRATEGIES)]], notable, number, exc)
            tasks = []
            for number, case in todo.items():
                path = folder / case.file_name
                path.write_bytes(case.data)
                config = ParseConfig(ocr=OcrMode.AUTO if case.ocr else OcrMode.NEVER)
                assets = folder / f"{case.file_name}.assets"
                doc_id = hashlib.sha256(case.data).hexdigest()
                tasks.append((number, (str(path), doc_id, config, str(assets), f"assets/{doc_id}", None)))
            try:
                for outcome in pool.run(tasks):
                    case = todo[outcome.key]
                    _record(case, outcome, limits, tallies[case.strategy], reasons, notable)
            except Exception as exc:  # noqa: BLE001 - counted: the supervisor must not fail
                for number in todo:
                    _problem(tallies[todo[number].strategy], notable, number, exc)
            for case in todo.values():
                (folder / case.file_name).unlink(missing_ok=True)
                shutil.rmtree(folder / f"{case.file_name}.assets", ignore_errors=True)
            done = numbers.stop - first
            if log is not None and (done % 200 < batch or done == cases):
                rate = done / (time.perf_counter() - started)
                log(f"{done}/{cases} cases, {rate:.2f}/s, restarts {pool.restarts}, "
                    f"problems {sum(t.main_problems + t.bad_reasons for t in tallies.values())}")
        restarts = pool.restarts
    wall = time.perf_counter() - started
    total = Tally()
    for tally in tallies.values():
        for key, value in vars(tally).items():
            if key not in ("slowest_s", "slowest_case"):
                setattr(total, key, getattr(total, key) + value)
        if tally.slowest_s > total.slowest_s:
            total.slowest_s, total.slowest_case = tally.slowest_s, tally.slowest_case
    return {
        "command": f"python -m bench.fuzz --cases {cases} --seed {seed} --first {first} --workers {workers} "
        f"--timeout-s {timeout_s:g} --memory-mb {limits.parse_memory_mb} --ocr-fraction {ocr_fraction:g}",
        "seeds": {s.name: sorted(s.variants) for s in seeds},
        "limits": {"parse_timeout_s": limits.parse_timeout_s, "parse_memory_mb": limits.parse_memory_mb},
        "wall_s": round(wall, 1),
        "cases_per_s": round(cases / wall, 3) if wall else None,
        "worker_restarts": restarts,
        "total": vars(total),
        "strategies": {name: vars(t) for name, t in tallies.items()},
        "top_reasons": reasons.most_common(40),
        "notable": notable[:500],
    }


def _record(case: Case, outcome, limits: IngestConfig, tally: Tally, reasons: Counter, notable: list) -> None:  # noqa: ANN001
    tally.cases += 1
    tally.ocr_cases += case.ocr
    tally.parse_s = round(tally.parse_s + outcome.seconds, 2)
    if outcome.seconds > tally.slowest_s:
        tally.slowest_s, tally.slowest_case = round(outcome.seconds, 2), case.number
    reason = None
    kind = outcome.status.value
    if outcome.status == TaskStatus.OK and isinstance(outcome.value, ParsedDocument):
        tally.parsed += 1
        kind = "parsed"
    elif outcome.status == TaskStatus.OK and isinstance(outcome.value, str):
        tally.failed += 1
        reason = outcome.value
        if ": unexpected parser error" in reason:
            tally.unexpected += 1
            kind = "unexpected"
    elif outcome.status == TaskStatus.OK:
        tally.main_problems += 1
        kind = f"odd value {type(outcome.value).__name__}"
    else:
        reason = parse_failure(case.file_name, outcome, limits)
        if outcome.status == TaskStatus.TIMEOUT:
            tally.timeouts += 1
        elif outcome.status == TaskStatus.CRASH:
            tally.crashes += 1
        elif outcome.status == TaskStatus.MEMORY:
            tally.memory += 1
        else:
            tally.task_errors += 1
    if reason is not None:
        if "\n" in reason or "\r" in reason or not reason.startswith(f"{case.file_name}: "):
            tally.bad_reasons += 1
            kind = "bad reason"
        reasons[re.sub(r"\d+", "N", reason.removeprefix(f"{case.file_name}: "))[:120]] += 1
    if kind not in ("parsed", "failed", "ok"):
        notable.append({"case": case.number, "strategy": case.strategy, "seed": case.seed, "variant": case.variant,
                        "ocr": case.ocr, "outcome": kind, "seconds": round(outcome.seconds, 2), "reason": reason})


def _problem(tally: Tally, notable: list, number: int, exc: BaseException) -> None:
    tally.main_problems += 1
    notable.append({"case": number, "outcome": "main-process problem",
                    "reason": "".join(traceback.format_exception_only(exc)).strip()})
