"""``kind = "sheets"``: Google Sheets ``spreadsheets.values.append``, one row per notification.

``POST {endpoint}/v4/spreadsheets/{id}/values/{range}:append?valueInputOption=RAW
&insertDataOption=INSERT_ROWS`` with a ``ValueRange`` body (``range``,
``majorDimension`` ``ROWS``, ``values``). ``RAW``: a value starting with ``=``
stays text, never a formula. The tab may name the event's month (``{yyyy}``,
``{mm}``) like the 2016 monthly tabs; a tab that does not exist yet is added
(``spreadsheets.batchUpdate`` ``addSheet``) and the append made again.

Credentials: Application Default Credentials (scope ``spreadsheets``), or an
access token from ``token_env`` (tests, short-lived tokens minted elsewhere).
"""

from __future__ import annotations

import asyncio
import datetime
import os
import urllib.parse
from typing import Any

import msgspec

from notifier.channels.base import DeliveryError, check_status, post
from notifier.jobs import Job
from notifier.rules import render
from oceanus.config import SheetsChannel

SCOPE = "https://www.googleapis.com/auth/spreadsheets"
_json = msgspec.json.Encoder()


def tab_for(template: str, event_ms: int) -> str:
    t = datetime.datetime.fromtimestamp(event_ms / 1000, datetime.UTC)
    return template.replace("{yyyy}", f"{t.year:04d}").replace("{mm}", f"{t.month:02d}")


def a1_range(tab: str) -> str:
    """``'tab'!A1`` with quotes doubled (the A1 notation of a sheet name with any characters)."""
    return "'" + tab.replace("'", "''") + "'!A1"


class SheetsSink:
    kind = "sheets"

    def __init__(self, name: str, cfg: SheetsChannel) -> None:
        self.name = name
        self.cfg = cfg
        self._creds: Any = None

    def _token(self) -> str:
        if self.cfg.token_env:
            token = os.environ.get(self.cfg.token_env, "")
            if not token:
                raise DeliveryError(f"${self.cfg.token_env} is empty", retryable=False)
            return token
        import google.auth
        import google.auth.exceptions
        import google.auth.transport.requests

        try:
            if self._creds is None:
                self._creds, _ = google.auth.default(scopes=[SCOPE])
            if not self._creds.valid:
                self._creds.refresh(google.auth.transport.requests.Request())
        except google.auth.exceptions.DefaultCredentialsError as exc:
            raise DeliveryError(f"no Application Default Credentials: {exc}", retryable=False) from None
        except google.auth.exceptions.RefreshError as exc:
            raise DeliveryError(f"refreshing the Google token failed: {exc}", retryable=True) from None
        return str(self._creds.token)

    def row(self, job: Job) -> list[Any]:
        when = datetime.datetime.fromtimestamp(job.event_ms / 1000, datetime.UTC).isoformat(timespec="seconds")
        cells: list[Any] = [when, job.rule, render(job.template, job.values)]
        for f in job.fields:
            v = job.values.get(f)
            cells.append("" if v is None else v)
        return cells

    async def send(self, job: Job) -> None:
        token = await asyncio.to_thread(self._token)
        tab = tab_for(self.cfg.tab, job.event_ms)
        rng = a1_range(tab)
        base = f"{self.cfg.endpoint.rstrip('/')}/v4/spreadsheets/{self.cfg.spreadsheet_id}"
        url = (
            f"{base}/values/{urllib.parse.quote(rng, safe='')}:append?valueInputOption=RAW&insertDataOption=INSERT_ROWS"
        )
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        body = _json.encode({"range": rng, "majorDimension": "ROWS", "values": [self.row(job)]})
        status, answer = await post(url, body, headers, self.cfg.timeout_s)
        if status == 400 and b"Unable to parse range" in answer:
            add = _json.encode({"requests": [{"addSheet": {"properties": {"title": tab}}}]})
            s2, a2 = await post(f"{base}:batchUpdate", add, headers, self.cfg.timeout_s)
            # "already exists": another notifier added it meanwhile.
            if s2 != 400 or b"already exists" not in a2:
                check_status(s2, a2, f"Sheets addSheet {tab!r} (channels.{self.name})")
            status, answer = await post(url, body, headers, self.cfg.timeout_s)
        check_status(status, answer, f"Sheets (channels.{self.name})")
