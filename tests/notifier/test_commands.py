"""The notifier's commands as an operator runs them: the installed ``oceanus`` in a process of its own."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.notifier.receivers import Receiver, http_receiver
from tests.notifier.support import REPO, make_config

OCEANUS = REPO / ".venv" / "bin" / "oceanus"
SECRET = "receiver-secret-0123456789"
#: Nothing listens there: neither command may need Redis.
NO_REDIS = "redis://127.0.0.1:1/0"


def run(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    # Only the variables the test names: an OCEANUS_* override or a secret from the caller's shell would change
    # what is being tested.
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OCEANUS_", "T_"))}
    return subprocess.run(
        [str(OCEANUS), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**base, "OCEANUS_REDIS_URL": NO_REDIS, **env},
    )


def test_notify_test_sends_one_signed_sample_and_names_an_unknown_rule(tmp_path: Path) -> None:
    with http_receiver(Receiver(secret=SECRET.encode())) as rx:
        _, text = make_config(
            NO_REDIS,
            f"""
[channels.hook]
kind = "webhook"
url = "{rx.url}/hook"
secret_env = "T_HOOK_SECRET"
[rules.paid]
stream = "pageview"
conditions = [{{ field = "evt", eq = "paid" }}]
template = "paid: {{uid}} on {{url}}"
fields = ["uid", "evt"]
channels = ["hook"]
""",
        )
        path = tmp_path / "oceanus.toml"
        path.write_text(text)
        proc = run(
            ["notify", "test", "paid", "--config", str(path), "--set", "evt=paid", "--set", "uid=u-42"],
            T_HOOK_SECRET=SECRET,
        )
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, "hook: sent\n", "")
        assert rx.bad_signatures == 0
        assert len(rx.posts) == 1
        post = rx.posts[0]
        assert post.path == "/hook"
        assert rx.verify(post.headers, post.body)  # the receiver's own check, again, on the stored post
        assert post.headers["idempotency-key"].startswith("paid:hook:test:")
        body = post.json()
        assert (body["kind"], body["rule"], body["stream"]) == ("event", "paid", "pageview")
        assert body["message"] == "paid: u-42 on sample url"
        assert body["event"] == {"uid": "u-42", "evt": "paid"}

        # Signed with another secret: the receiver refuses it and the command says so, exit 1.
        proc = run(["notify", "test", "paid", "--config", str(path)], T_HOOK_SECRET="not-the-secret")
        assert proc.returncode == 1
        assert proc.stdout.startswith("hook: FAILED (permanent): ")
        assert "401" in proc.stdout
        assert rx.bad_signatures == 1

        proc = run(["notify", "test", "nope", "--config", str(path)], T_HOOK_SECRET=SECRET)
        assert proc.returncode == 2
        assert proc.stdout == ""
        assert proc.stderr == "oceanus notify: no rule named 'nope' (rules: paid)\n"
        assert len(rx.posts) == 1  # nothing more was sent


def test_check_config_names_every_missing_secret_and_exits_2(tmp_path: Path) -> None:
    secret_file = tmp_path / "hook.secret"
    _, text = make_config(
        NO_REDIS,
        f"""
[channels.team]
kind = "slack"
url_env = "T_SLACK_URL"
[channels.hook]
kind = "webhook"
url = "https://hooks.example/x"
secret_file = "{secret_file}"
[channels.mail]
kind = "email"
host = "smtp.example"
sender = "oceanus@example.com"
to = ["team@example.com"]
username = "oceanus"
password_env = "T_SMTP_PASSWORD"
[rules.paid]
stream = "pageview"
conditions = [{{ field = "evt", eq = "paid" }}]
channels = ["team", "hook", "mail"]
""",
    )
    path = tmp_path / "oceanus.toml"
    path.write_text(text)
    proc = run(["check-config", "--config", str(path)])
    assert proc.returncode == 2
    assert "rule paid: stream pageview, 1 condition(s) (all) -> team, hook, mail" in proc.stdout
    assert proc.stderr == (
        "oceanus check-config: secrets missing: channels.team: the url is missing ($T_SLACK_URL); "
        f"channels.hook: the secret is missing (file {secret_file}); "
        "channels.mail: the password is missing ($T_SMTP_PASSWORD)\n"
    )
    # One given: the other two are still named.
    proc = run(["check-config", "--config", str(path)], T_SLACK_URL="https://hooks.slack.example/services/x")
    assert proc.returncode == 2
    assert proc.stderr == (
        f"oceanus check-config: secrets missing: channels.hook: the secret is missing (file {secret_file}); "
        "channels.mail: the password is missing ($T_SMTP_PASSWORD)\n"
    )
    # An empty variable is as good as none.
    secret_file.write_text("s3cret")
    proc = run(
        ["check-config", "--config", str(path)],
        T_SLACK_URL="https://hooks.slack.example/services/x",
        T_SMTP_PASSWORD="",
    )
    assert proc.returncode == 2
    assert (
        proc.stderr == "oceanus check-config: secrets missing: channels.mail: the password is missing "
        "($T_SMTP_PASSWORD)\n"
    )
    proc = run(
        ["check-config", "--config", str(path)],
        T_SLACK_URL="https://hooks.slack.example/services/x",
        T_SMTP_PASSWORD="p",
    )
    assert (proc.returncode, proc.stderr) == (0, "")
    assert "channel mail (email)" in proc.stdout
