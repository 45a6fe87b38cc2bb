"""Each channel against a real local server: what arrives, and that hostile values arrive inert."""

from __future__ import annotations

import asyncio
import email
import email.policy
import hashlib
import hmac
from pathlib import Path

import pytest

from notifier.channels.base import DeliveryError
from notifier.channels.email import EmailSink
from notifier.channels.sheets import SheetsSink, a1_range, tab_for
from notifier.channels.slack import SlackSink
from notifier.channels.webhook import WebhookSink, sign
from notifier.jobs import Job, Value
from oceanus.config import EmailChannel, SheetsChannel, SlackChannel, WebhookChannel
from tests.notifier.receivers import FakeSheets, Receiver, http_receiver, sheets_server, smtp_server

# 2016-03-09T12:00:00Z in ms: the Sheets tab of a 2016 event is named for its month.
EVENT_MS = 1_457_524_800_000
HOSTILE = '*bold* _it_ ~x~ `code` <!channel> <@U1> <https://evil.example|click> & =HYPERLINK("x")'


def job(
    values: dict[str, Value],
    template: str = "{rule}: {evt} on {url}",
    subject: str = "oceanus: {evt}",
    fields: tuple[str, ...] = ("evt", "url"),
) -> Job:
    return Job(
        id="paid:team:0190aa",
        rule="paid",
        channel="team",
        stream="pageview",
        event_id="0190aa",
        event_ms=EVENT_MS,
        created_ms=EVENT_MS,
        template=template,
        subject=subject,
        values={"rule": "paid", **values},
        fields=fields,
    )


def test_slack_escapes_every_value_and_keeps_the_template(monkeypatch: pytest.MonkeyPatch) -> None:
    with http_receiver(Receiver()) as rx:
        monkeypatch.setenv("T_SLACK_URL", rx.url + "/services/T/B/x")
        sink = SlackSink("team", SlackChannel(url_env="T_SLACK_URL"))
        asyncio.run(
            sink.send(job({"evt": HOSTILE, "url": "https://a.example/?a=1&b=2"}, template="*{rule}*: {evt} on {url}"))
        )
    [post] = rx.posts
    assert post.path == "/services/T/B/x"
    z = "\u200b"
    assert post.json() == {
        "text": (
            f"*paid*: *{z}bold*{z} _{z}it_{z} ~{z}x~{z} `{z}code`{z} &lt;!channel&gt; &lt;@U1&gt; "
            f'&lt;https://evil.example|click&gt; &amp; =HYPERLINK("x") on https://a.example/?a=1&amp;b=2'
        )
    }


@pytest.mark.parametrize(
    ("status", "retryable"),
    [(404, False), (403, False), (410, False), (400, False), (429, True), (500, True), (503, True)],
)
def test_slack_failures_are_classified(monkeypatch: pytest.MonkeyPatch, status: int, retryable: bool) -> None:
    with http_receiver(Receiver(status=status)) as rx:
        monkeypatch.setenv("T_SLACK_URL", rx.url + "/services/x")
        sink = SlackSink("team", SlackChannel(url_env="T_SLACK_URL"))
        with pytest.raises(DeliveryError) as err:
            asyncio.run(sink.send(job({"evt": "paid", "url": "u"})))
    assert err.value.retryable is retryable
    assert f"answered {status}" in err.value.reason


def test_a_closed_port_is_retryable(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.support.servers import free_port

    monkeypatch.setenv("T_SLACK_URL", f"http://127.0.0.1:{free_port()}/x")
    with pytest.raises(DeliveryError) as err:
        asyncio.run(SlackSink("team", SlackChannel(url_env="T_SLACK_URL")).send(job({"evt": "a", "url": "b"})))
    assert err.value.retryable is True


def test_webhook_is_signed_and_verifiable(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = b"s3cret-for-the-receiver"
    monkeypatch.setenv("T_HOOK_SECRET", secret.decode())
    with http_receiver(Receiver(secret=secret)) as rx:
        sink = WebhookSink("hook", WebhookChannel(url=rx.url + "/hook", secret_env="T_HOOK_SECRET"))
        asyncio.run(sink.send(job({"evt": "paid\r\nX-Injected: 1", "url": "https://a.example/"})))
    assert rx.bad_signatures == 0
    [post] = rx.posts
    assert post.headers["idempotency-key"] == "paid:team:0190aa"
    assert "x-injected" not in post.headers
    ts = post.headers["x-oceanus-timestamp"]
    assert (
        post.headers["x-oceanus-signature"]
        == "sha256=" + hmac.new(secret, ts.encode() + b"." + post.body, hashlib.sha256).hexdigest()
    )
    assert post.json() == {
        "id": "paid:team:0190aa",
        "kind": "event",
        "rule": "paid",
        "stream": "pageview",
        "event_id": "0190aa",
        "event_ms": EVENT_MS,
        "message": "paid: paid\r\nX-Injected: 1 on https://a.example/",
        "event": {"evt": "paid\r\nX-Injected: 1", "url": "https://a.example/"},
    }


def test_webhook_signature_pins_the_format() -> None:
    # sha256 HMAC of "1700000000.{}" with key "k", computed independently (openssl dgst -sha256 -hmac k).
    assert sign(b"k", "1700000000", b"{}") == "sha256=" + hmac.new(b"k", b"1700000000.{}", "sha256").hexdigest()
    assert sign(b"k", "1700000000", b"{}") != sign(b"k", "1700000001", b"{}")


def test_a_wrong_secret_is_refused_by_the_receiver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_HOOK_SECRET", "not-the-receivers-secret")
    with http_receiver(Receiver(secret=b"the-real-one")) as rx:
        sink = WebhookSink("hook", WebhookChannel(url=rx.url + "/hook", secret_env="T_HOOK_SECRET"))
        with pytest.raises(DeliveryError) as err:
            asyncio.run(sink.send(job({"evt": "paid", "url": "u"})))
    assert rx.bad_signatures == 1
    assert not rx.posts
    assert err.value.retryable is False


def test_sheets_appends_to_the_month_tab_adding_it_once(monkeypatch: pytest.MonkeyPatch) -> None:
    assert tab_for("revelation {yyyy}-{mm}", EVENT_MS) == "revelation 2016-03"
    assert a1_range("it's") == "'it''s'!A1"
    monkeypatch.setenv("T_SHEETS_TOKEN", "ya29.test-token")
    with sheets_server(FakeSheets(token="ya29.test-token"), "sheet123") as fake:
        sink = SheetsSink(
            "sheet",
            SheetsChannel(
                spreadsheet_id="sheet123", tab="revelation {yyyy}-{mm}", endpoint=fake.url, token_env="T_SHEETS_TOKEN"
            ),
        )
        asyncio.run(sink.send(job({"evt": '=HYPERLINK("https://evil")', "url": "https://a.example/"})))
        asyncio.run(sink.send(job({"evt": "paid", "url": "https://b.example/"})))
    assert fake.sheets["revelation 2016-03"] == [
        [
            "2016-03-09T12:00:00+00:00",
            "paid",
            'paid: =HYPERLINK("https://evil") on https://a.example/',
            '=HYPERLINK("https://evil")',
            "https://a.example/",
        ],
        ["2016-03-09T12:00:00+00:00", "paid", "paid: paid on https://b.example/", "paid", "https://b.example/"],
    ]
    paths = [p for p, _ in fake.requests]
    # append (missing tab), addSheet, append, append: the tab is added once.
    append = "%27revelation%202016-03%27%21A1:append"
    assert [p.split("/")[-1].split("?")[0] for p in paths] == [append, "sheet123:batchUpdate", append, append]
    assert all("valueInputOption=RAW" in p for p in paths if ":append" in p)


def test_sheets_with_a_revoked_token_is_dead_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_SHEETS_TOKEN", "revoked")
    with sheets_server(FakeSheets(token="the-valid-one"), "s1") as fake:
        sink = SheetsSink("sheet", SheetsChannel(spreadsheet_id="s1", endpoint=fake.url, token_env="T_SHEETS_TOKEN"))
        with pytest.raises(DeliveryError) as err:
            asyncio.run(sink.send(job({"evt": "a", "url": "b"})))
    assert err.value.retryable is False
    assert "401" in err.value.reason


def test_email_over_starttls_with_a_ca_from_config_and_no_header_injection(tmp_path: Path) -> None:
    with smtp_server(tmp_path) as (box, ca):
        sink = EmailSink(
            "mail",
            EmailChannel(
                host="127.0.0.1", port=box.port, ca_file=str(ca), sender="oceanus@example.com", to=("team@example.com",)
            ),
        )
        asyncio.run(
            sink.send(
                job(
                    {"evt": "paid\r\nBcc: victim@example.com\r\n\r\nforged", "url": "u" * 5000},
                    subject="oceanus: {evt}",
                )
            )
        )
    [(sender, rcpts, data)] = box.messages
    assert sender == "oceanus@example.com"
    assert rcpts == ["team@example.com"]
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert msg["Subject"] == "oceanus: paid  Bcc: victim@example.com    forged"
    assert msg["Bcc"] is None
    assert msg["To"] == "team@example.com"
    assert "forged" in msg.get_content()


def test_email_refuses_an_untrusted_certificate_for_good(tmp_path: Path) -> None:
    with smtp_server(tmp_path) as (box, _ca):
        sink = EmailSink(
            "mail", EmailChannel(host="127.0.0.1", port=box.port, sender="o@example.com", to=("t@example.com",))
        )
        with pytest.raises(DeliveryError) as err:
            asyncio.run(sink.send(job({"evt": "a", "url": "b"})))
    assert err.value.retryable is False
    assert "certificate" in err.value.reason
    assert box.messages == []
