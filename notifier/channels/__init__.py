"""One module per channel kind; :func:`make_channel` imports only the one configured."""

from __future__ import annotations

from notifier.channels.base import Channel
from oceanus.config import ChannelConfig, EmailChannel, LogChannel, SheetsChannel, SlackChannel, WebhookChannel


def make_channel(name: str, cfg: ChannelConfig) -> Channel:
    if isinstance(cfg, LogChannel):
        from notifier.channels.log import LogSink

        return LogSink(name, cfg)
    if isinstance(cfg, SlackChannel):
        from notifier.channels.slack import SlackSink

        return SlackSink(name, cfg)
    if isinstance(cfg, WebhookChannel):
        from notifier.channels.webhook import WebhookSink

        return WebhookSink(name, cfg)
    if isinstance(cfg, SheetsChannel):
        from notifier.channels.sheets import SheetsSink

        return SheetsSink(name, cfg)
    if isinstance(cfg, EmailChannel):
        from notifier.channels.email import EmailSink

        return EmailSink(name, cfg)
    raise TypeError(f"unknown channel config {type(cfg).__name__}")
