"""``kind = "slack"``: a Slack incoming webhook (``{"text": ...}``).

Values are escaped the way Slack documents (``&`` ``<`` ``>`` as entities), so
an event cannot write ``<!channel>``, ``<@U123>`` or ``<https://x|click>``;
and a zero-width space follows each of ``* _ ~ `` ` so it cannot open bold,
italics, strike or code either. The operator's template keeps its markup.
"""

from __future__ import annotations

import msgspec

from notifier.channels.base import check_status, post, read_secret
from notifier.jobs import Job
from notifier.rules import render
from oceanus.config import SlackChannel

#: Slack cuts a message's text at 40,000 characters; stay well below.
MAX_TEXT_CHARS = 3_000
_ZWSP = "\u200b"
_ESCAPES = str.maketrans(
    {"&": "&amp;", "<": "&lt;", ">": "&gt;", "*": "*" + _ZWSP, "_": "_" + _ZWSP, "~": "~" + _ZWSP, "`": "`" + _ZWSP}
)
_json = msgspec.json.Encoder()


def escape(text: str) -> str:
    return text.translate(_ESCAPES)


class SlackSink:
    kind = "slack"

    def __init__(self, name: str, cfg: SlackChannel) -> None:
        self.name = name
        self.cfg = cfg
        self.url = read_secret(cfg.url_env, cfg.url_file, f"channels.{name}.url_env")

    def payload(self, job: Job) -> bytes:
        text = render(job.template, job.values, escape)
        if len(text) > MAX_TEXT_CHARS:
            text = text[: MAX_TEXT_CHARS - 1] + "…"
        return _json.encode({"text": text})

    async def send(self, job: Job) -> None:
        status, body = await post(self.url, self.payload(job), {"Content-Type": "application/json"}, self.cfg.timeout_s)
        check_status(status, body, f"Slack (channels.{self.name})")
