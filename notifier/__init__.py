"""``oceanus notify``: rules evaluated on the collector's frames, messages to Slack, webhooks,
Google Sheets, e-mail and a log (docs/ARCHITECTURE.md, "Notifier")."""
