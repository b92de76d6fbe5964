"""`edge tenant import FILE.csv`: many moves from a file, every row checked before any move.

The file has two columns, tenant and mode, one move a row; a first row reading
``tenant,mode`` is a header and skipped, as are blank rows. The rows go through the move
service's (or the admin API's) bulk move: a dry run first, which checks every row against the
store and changes nothing, then the moves in chunks, each chunk checked again, with a progress
bar when the terminal can show one.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TextIO

from tqdm import tqdm

from edge.core.refusals import FORCE_FLAG
from edge.modes import StoreUnavailable
from edge.moves.service import BulkMove, BulkRefused, MoveOutcome, MoveResult

CHUNK = 200
HEADER = ["tenant", "mode"]


class BulkMover(Protocol):
    """The move service, or the admin API of the edge that holds the store."""

    async def move_many(self, bulk: BulkMove) -> list[MoveResult]: ...


@dataclass(frozen=True)
class Row:
    line: int
    tenant: str
    mode: str


@dataclass(frozen=True)
class BadRow:
    line: int
    reason: str


def read_rows(path: Path) -> tuple[list[Row], list[BadRow]]:
    """The rows of a tenant,mode file and the rows that are not one.

    Raises OSError when the file cannot be read, ValueError when it is not UTF-8 text.
    """
    rows: list[Row] = []
    bad: list[BadRow] = []
    with path.open(newline="", encoding="utf-8-sig") as file:
        reader = csv.reader(file, strict=True)
        try:
            for raw in reader:
                cells = [cell.strip() for cell in raw]
                if not any(cells):
                    continue
                if not rows and not bad and [cell.lower() for cell in cells] == HEADER:
                    continue
                if len(cells) != 2:
                    reason = f"expected 2 columns (tenant,mode), found {len(cells)}"
                    bad.append(BadRow(reader.line_num, reason))
                else:
                    rows.append(Row(reader.line_num, cells[0], cells[1]))
        except csv.Error as exc:
            bad.append(BadRow(reader.line_num, f"not CSV: {exc}; the rest is not read"))
    return rows, bad


def summary(results: Sequence[MoveResult]) -> str:
    tally = Counter(result.outcome for result in results)
    return ", ".join(f"{outcome.value} {tally[outcome]}" for outcome in MoveOutcome)


async def import_rows(
    ops: BulkMover,
    source: str,
    rows: Sequence[Row],
    bad: Sequence[BadRow],
    *,
    actor: str,
    force: bool,
    dry_run: bool,
    progress: bool,
    out: TextIO,
    err: TextIO,
) -> bool:
    """Check every row, then (unless a dry run) make the moves. True when all went through."""
    moves = [(row.tenant, row.mode) for row in rows]
    problems = list(bad)
    try:
        planned = await ops.move_many(BulkMove(moves, actor=actor, force=force, dry_run=True))
    except BulkRefused as exc:
        problems += [BadRow(rows[p.index].line, p.refusal.says(FORCE_FLAG)) for p in exc.problems]
    if problems:
        for problem in sorted(problems, key=lambda problem: problem.line):
            print(f"{source}:{problem.line}: {problem.reason}", file=err)
        print(f"edge: refused: {len(problems)} bad rows; nothing changed", file=err)
        return False
    if not rows:
        print(f"edge: refused: {source} has no rows (tenant,mode)", file=err)
        return False
    if dry_run:
        for result in planned:
            if result.outcome is MoveOutcome.MOVED:
                print(f"{result.tenant}: {result.previous or 'legacy'} → {result.mode}", file=out)
        print(f"dry run, nothing changed: would be {summary(planned)}", file=out)
        return True
    return await _move(
        ops, source, rows, actor=actor, force=force, progress=progress, out=out, err=err
    )


async def _move(
    ops: BulkMover,
    source: str,
    rows: Sequence[Row],
    *,
    actor: str,
    force: bool,
    progress: bool,
    out: TextIO,
    err: TextIO,
) -> bool:
    lines = {row.tenant: row.line for row in rows}
    results: list[MoveResult] = []
    stopped = ""
    with tqdm(total=len(rows), disable=not progress, file=err, unit="tenant") as bar:
        for start in range(0, len(rows), CHUNK):
            chunk = [(row.tenant, row.mode) for row in rows[start : start + CHUNK]]
            try:
                results += await ops.move_many(
                    BulkMove(chunk, actor=actor, force=force, via="import")
                )
            except BulkRefused as exc:  # a tenant moved on since the check
                for problem in exc.problems:
                    reason = problem.refusal.says(FORCE_FLAG)
                    print(f"{source}:{lines[problem.tenant]}: {reason}", file=err)
                stopped = "stopped: tenants changed since the check"
                break
            except StoreUnavailable as exc:
                stopped = f"stopped: the mode store cannot be reached: {exc}"
                break
            bar.update(len(chunk))
    for result in results:
        if result.refusal is not None:
            print(f"{source}:{lines[result.tenant]}: {result.refusal.says(FORCE_FLAG)}", file=err)
    print(summary(results), file=out)
    if stopped:
        print(
            f"edge: {stopped}; {len(rows) - len(results)} rows were not tried. Running the "
            "import again is safe: tenants already moved come out unchanged",
            file=err,
        )
    return not stopped and all(r.outcome is not MoveOutcome.REFUSED for r in results)
