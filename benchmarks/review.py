"""`coder review` on a large dump: a synthetic dump of N notes and its predictions (top K codes per note and
system, as `coder predict` writes them) in a temporary folder, the review opened on every note and served by
uvicorn in this process; times the opening (indexes, the code search) and a note's page (GET of its JSON, as
the page's script asks), a decision written, and a search. Appends the figures to benchmarks/RESULTS.md.

    python benchmarks/review.py --notes 100000 --codes 50
"""

from __future__ import annotations

import argparse
import multiprocessing
import json
import os
import platform
import random
import resource
import shlex
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import add_run  # noqa: E402

from coder.ontology import load_ontology  # noqa: E402
from coder.review.server import HEADER, bind  # noqa: E402
from coder.review.session import Review  # noqa: E402
from coder.schema import CM, PCS, PREDICTION_SCHEMA  # noqa: E402
from coder.validate import AssignableCodes  # noqa: E402

WORDS = "patient fever cough abdominal pain history of diabetes hypertension was admitted with and the no".split()


def write_dump(folder: Path, *, notes: int, codes: int, seed: int = 0) -> tuple[Path, Path]:
    """notes.parquet (note_id, text of ~2,500 characters) and predictions.parquet (``codes`` per note and system)."""
    rng = random.Random(seed)
    ontology = load_ontology()
    pool = {system: list(ontology.codes(system, billable_only=True)[:5000]) for system in (CM, PCS)}
    ids = [f"note-{i:06d}" for i in range(notes)]
    texts = [" ".join(rng.choices(WORDS, k=400)) for _ in range(notes)]
    pl.DataFrame({"note_id": ids, "text": texts}).write_parquet(folder / "notes.parquet")
    per_note = 2 * codes
    rank = pl.int_range(1, codes + 1, eager=True, dtype=pl.Int32)
    frame = pl.DataFrame({
        "note_id": pl.Series(ids).repeat_by(per_note).explode(),
        "system": pl.Series([CM] * codes + [PCS] * codes * 1).to_list() * notes,
        "rank": pl.concat([rank, rank]).to_list() * notes,
    })
    picked = [rng.choice(pool[system]) for system in frame.get_column("system").to_list()]
    described = {code: ontology.description(code, system) for system in pool for code in pool[system]}
    frame = frame.with_columns(
        pl.Series("code", picked), pl.Series("description", [described[code] for code in picked]),
        (1.0 / pl.col("rank")).alias("score"), (pl.col("rank") <= 3).alias("above_threshold"),
        pl.lit("plm_icd").alias("source"),
        pl.when(pl.col("rank") <= 3).then(pl.lit("fever")).alias("evidence_text"),
        pl.when(pl.col("rank") <= 3).then(pl.lit(8, pl.Int32)).alias("evidence_start"),
        pl.when(pl.col("rank") <= 3).then(pl.lit(13, pl.Int32)).alias("evidence_end"),
        pl.when(pl.col("rank") <= 3).then(pl.lit("text")).alias("evidence_column"),
        pl.lit("release").alias("validity"),
    )
    frame.select(PREDICTION_SCHEMA.names()).cast(dict(PREDICTION_SCHEMA)).write_parquet(folder / "predictions.parquet")
    return folder / "predictions.parquet", folder / "notes.parquet"


def timed(call) -> tuple[float, object]:
    started = time.perf_counter()
    result = call()
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notes", type=int, default=100_000)
    parser.add_argument("--codes", type=int, default=50, help="predicted codes per note and system")
    parser.add_argument("--opens", type=int, default=200, help="notes opened, at random positions of the queue")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        # The dump is written in a child process, so that this process's peak memory is the review's alone.
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
            made, (predictions, notes) = timed(lambda: child.submit(write_dump, folder, notes=args.notes, codes=args.codes).result())
        sizes = {path.name: path.stat().st_size / 2**20 for path in (predictions, notes)}
        gate = AssignableCodes(load_ontology(), truncations={PCS: (4,)})
        opened, review = timed(lambda: Review.open(predictions, notes=notes, out=folder / "decisions.parquet",
                                                   reviewer="bench", gate=gate))
        served = bind(review)
        thread = threading.Thread(target=served.run, daemon=True)
        thread.start()
        base, token = served.url.split("/?token=")

        def call(method: str, path: str, body: dict | None = None) -> dict:
            request = urllib.request.Request(base + path, method=method, headers={HEADER: token, "Content-Type": "application/json"},
                                             data=json.dumps(body).encode() if body is not None else None)
            with urllib.request.urlopen(request) as response:
                return json.loads(response.read())

        rng = random.Random(1)
        positions = [rng.randrange(len(review.queue)) for _ in range(args.opens)]
        opens = [timed(lambda p=p: call("GET", f"/api/notes/{p}"))[0] for p in positions]
        decisions = [timed(lambda p=p: call("POST", f"/api/notes/{p}/complete"))[0] for p in positions[:50]]
        searches = [timed(lambda q=q: call("GET", "/api/codes?" + urllib.parse.urlencode({"q": q})))[0] for q in ("diab", "type 2 diabetes", "0DT", "E11.6")]
        served.stop()
        thread.join(timeout=10)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def line(name: str, values: list[float]) -> str:
        ordered = sorted(values)
        return (f"| {name} | {len(values)} | {statistics.median(values) * 1000:.0f} | "
                f"{ordered[int(0.95 * (len(ordered) - 1))] * 1000:.0f} | {ordered[-1] * 1000:.0f} |")

    section = "\n".join([
        f"### {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"`{shlex.join(['python', 'benchmarks/review.py', *sys.argv[1:]])}` on {platform.machine()} "
        f"({os.cpu_count()} CPUs, shared); load average {os.getloadavg()[0]:.1f} at the end.",
        "",
        f"Dump: {args.notes} notes ({sizes['notes.parquet']:.0f} MiB), {args.notes * 2 * args.codes} prediction rows "
        f"({sizes['predictions.parquet']:.0f} MiB), written in {made:.0f} s. `Review.open` (both note_id indexes, "
        f"the queue of every note, the code search over the release): {opened:.1f} s; peak RSS of the review's process "
        f"{rss:.0f} MiB.",
        "",
        "| request (real uvicorn, urllib) | n | median ms | p95 ms | max ms |",
        "|---|---:|---:|---:|---:|",
        line("a note's page (GET /api/notes/N)", opens),
        line("mark a note reviewed (its 8+8 decisions written)", decisions),
        line("code search", searches),
        "",
    ])
    print(section)
    if not args.no_write:
        add_run("review", title="## `coder review` on a large dump (benchmarks/review.py)", section=section)


if __name__ == "__main__":
    main()
