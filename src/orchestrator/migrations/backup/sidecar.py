"""The sidecar: the JSON file `<backup>.json` beside each backup, recording the database it came
from (never its password), the revision it was taken at, when and why.

Written last, after the backup has its final name: a backup without its sidecar is an
unfinished one. A file without a readable sidecar of ours reads as None.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

from orchestrator import __version__
from orchestrator.migrations.backup.info import KINDS, BackupInfo, sidecar_path

SIDECAR_FORMAT = "orchestrator-backup"
# The names the tool gives: <database>-<UTC time>-<revision>-<reason>.<extension>.
_AUTOMATIC_NAME = re.compile(r"-\d{8}T\d{12}Z-[^-]+-[a-z-]+\.(?:sqlite|dump)$")


def write_sidecar(info: BackupInfo) -> None:
    document = {"format": SIDECAR_FORMAT, "tool_version": __version__, **info.as_dict()}
    document["path"] = info.path.name
    temporary = info.sidecar.with_name(info.sidecar.name + ".tmp")
    temporary.write_text(json.dumps(document, indent=2) + "\n")
    # Written last and renamed into place: a backup without its sidecar is an unfinished one.
    temporary.replace(info.sidecar)


def read_sidecar(path: Path) -> BackupInfo | None:
    """What the sidecar of the backup at `path` says, or None without a sidecar of ours."""
    try:
        document = json.loads(sidecar_path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(document, dict) or document.get("format") != SIDECAR_FORMAT:
        return None
    if document.get("dialect") not in KINDS:
        return None
    try:
        return BackupInfo(
            path=path,
            dialect=document["dialect"],
            database=document["database"],
            revision=document["revision"],
            created_at=dt.datetime.fromisoformat(document["created_at"]),
            reason=document["reason"],
            size=int(document["size"]),
            # Sidecars written before the field existed: the tool's names have one shape.
            automatic_name=bool(document.get("automatic_name",
                                             _AUTOMATIC_NAME.search(path.name) is not None)),
        )
    except (KeyError, TypeError, ValueError):
        return None
