"""Who this installation is to the hub: its agent id and last session, kept under ``var/lib/ksocket``.

The link presents them when it authenticates; the pipeline renews the agent id when the journal
in the broker's Redis was lost, so that the hub counts the new results afresh.
"""

from __future__ import annotations

import contextlib
import uuid
from pathlib import Path

from ksocket import config, paths

AGENT_ID = "agent-id"
SESSION = "session"


class Identity:
    """Who this installation is to the hub: a stable agent id and its last session, under ``var/lib/ksocket``.

    The session outlives a restart so that an agent restarted while the hub still holds its old,
    half-open connection resumes that session instead of being refused as ``slot-in-use``.
    """

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder or paths.state_dir()
        self.agent = self._read(AGENT_ID) or self._write(AGENT_ID, str(uuid.uuid4()))
        self.session = self._read(SESSION)

    @staticmethod
    def exists(folder: Path | None = None) -> bool:
        """Whether ``folder`` holds an identity already (without making one)."""
        return ((folder or paths.state_dir()) / AGENT_ID).is_file()

    def renew(self) -> None:
        """A new agent id and no session: to the hub a new installation, whose seq count starts afresh."""
        self.agent = self._write(AGENT_ID, str(uuid.uuid4()))
        self.session = None
        (self.folder / SESSION).unlink(missing_ok=True)

    def remember(self, session: str) -> None:
        if session != self.session:
            self.session = self._write(SESSION, session)

    def _read(self, name: str) -> str | None:
        with contextlib.suppress(FileNotFoundError):
            return (self.folder / name).read_text().strip() or None
        return None

    def _write(self, name: str, value: str) -> str:
        config.write_private(self.folder / name, value + "\n")
        return value
