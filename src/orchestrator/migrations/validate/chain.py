"""The chain rules' analysis (MIG001 single head, MIG002 complete chain) from the scripts'
own text, so that a chain Alembic cannot load is still described."""

from __future__ import annotations

from orchestrator.migrations.validate.report import ERROR, Finding
from orchestrator.migrations.validate.scripts import ScriptFile


def chain_findings(scripts: list[ScriptFile]) -> dict[str, list[Finding]]:
    heads_found: list[Finding] = []
    broken: list[Finding] = []

    def problem(script: ScriptFile, message: str, fix: str, line_of: str = "down_revision"):
        broken.append(
            Finding("MIG002", "complete-chain", ERROR, message, fix, str(script.path),
                    script.lines.get(line_of))
        )

    by_id: dict[str, ScriptFile] = {}
    for script in scripts:
        if script.syntax_error:
            problem(script, f"{script.path.name} does not parse ({script.syntax_error})",
                    "fix the syntax error", "revision")
        elif script.revision is None or script.down_revisions is None:
            problem(script, f"{script.path.name} does not state its revision and down_revision "
                    "as plain strings", "write `revision = \"NNN\"` and "
                    "`down_revision = \"MMM\"` (or None for the first) at module level", "revision")
        elif script.revision in by_id:
            continue  # two branches each added this id: MIG023 names both files
        else:
            by_id[script.revision] = script
    parents = {rev: s.down_revisions or () for rev, s in by_id.items()}
    for revision, script in by_id.items():
        for parent in parents[revision]:
            if parent not in by_id:
                problem(script, f"revision {revision} follows {parent}, which does not exist",
                        f"restore the script of {parent}, or point down_revision at the "
                        "revision it should follow")
    bases = [rev for rev in by_id if not parents[rev]]
    if len(bases) > 1:
        for revision in bases[1:]:
            problem(by_id[revision], f"revision {revision} starts a second history (its "
                    f"down_revision is None, like {bases[0]}'s)",
                    "set its down_revision to the revision it follows")
    children = {parent for rev in by_id for parent in parents[rev]}
    heads = sorted(rev for rev in by_id if rev not in children)
    reachable = _ancestors(heads, parents)
    # A line cut off by a missing parent is reported above, not as a second head.
    heads = [head for head in heads if _ancestors([head], parents) & set(bases)]
    for revision in sorted(set(by_id) - reachable):
        problem(by_id[revision], f"revision {revision} is part of a cycle of down_revisions",
                "make the down_revisions form one line from the first revision to the last")
    if len(heads) > 1:
        heads_found.append(
            Finding(
                "MIG001",
                "single-head",
                ERROR,
                f"the scripts have {len(heads)} heads ({', '.join(heads)}): migrations were "
                "written in parallel from the same parent",
                "run `orchestrator db rebase`: it renumbers this branch's migrations to follow "
                "the other line's (docs/migrations.md, \"Working on a team\")",
                str(by_id[heads[-1]].path),
                by_id[heads[-1]].lines.get("down_revision"),
            )
        )
    return {"MIG001": heads_found, "MIG002": broken}


def _ancestors(heads: list[str], parents: dict[str, tuple[str, ...]]) -> set[str]:
    seen: set[str] = set()
    stack = list(heads)
    while stack:
        revision = stack.pop()
        if revision in seen or revision not in parents:
            continue
        seen.add(revision)
        stack.extend(parents[revision])
    return seen

