"""``oceanus notify [serve]``, ``oceanus notify test RULE``, ``oceanus notify dead list|replay``.

``test`` renders a sample event of the rule's stream (``--set field=value`` to
choose values) and sends it through each of the rule's real channels, once,
without the queue, the rate limit or the delivery keys: what you see is what
the team will see. ``dead replay`` moves a channel's dead letters back to the
head of its jobs list (after the channel was fixed); a job sent meanwhile is
not sent twice (its delivery key).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import msgspec
import redis

from notifier import jobs
from notifier.channels import make_channel
from notifier.channels.base import DeliveryError
from notifier.keys import NotifyKeys
from notifier.rules import cut, needed_fields
from oceanus import config, redisclient
from oceanus.commands import EXIT_FAILED, UsageError

_dead = msgspec.json.Decoder(dict[str, Any])


def sample_values(stream: config.StreamConfig, overrides: list[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, f in stream.fields.items():
        values[name] = {"int": 1, "float": 1.5, "bool": True}.get(f.type, f"sample {name}")
    values.update(
        {
            "ip": "203.0.113.7",
            "ua": "oceanus notify test",
            "device": "desktop",
            "event_id": "0" * 32,
            "received_at": int(time.time() * 1_000_000),
        }
    )
    for item in overrides:
        key, sep, val = item.partition("=")
        if not sep or key not in values:
            raise UsageError(f"--set {item!r}: expected FIELD=VALUE with a field of stream {stream.name!r}")
        values[key] = val
    return values


async def _test(cfg: config.Config, rule_name: str, overrides: list[str]) -> int:
    rule = cfg.rules.get(rule_name)
    if rule is None:
        raise UsageError(f"no rule named {rule_name!r} (rules: {', '.join(cfg.rules) or 'none'})")
    stream = cfg.streams[rule.stream]
    ev = sample_values(stream, overrides)
    fields = needed_fields(rule, list(ev))
    values = {f: cut(ev.get(f), cfg.notify.max_value_chars) for f in fields}
    values.update(
        {
            "rule": rule.name,
            "stream": rule.stream,
            "count": rule.threshold.count if rule.threshold else 1,
            "group": "test",
            "window_s": f"{rule.threshold.window_s:g}" if rule.threshold else "",
        }
    )
    failed = 0
    for ch in rule.channels:
        now_ms = int(time.time() * 1000)
        job = jobs.Job(
            id=f"{rule.name}:{ch}:test:{now_ms}",
            rule=rule.name,
            channel=ch,
            stream=rule.stream,
            event_id=ev["event_id"],
            event_ms=now_ms,
            created_ms=now_ms,
            template=rule.template,
            subject=rule.subject,
            values=values,
            fields=rule.fields or fields,
        )
        try:
            await make_channel(ch, cfg.channels[ch]).send(job)
        except DeliveryError as exc:
            print(f"{ch}: FAILED ({'retryable' if exc.retryable else 'permanent'}): {exc.reason}")
            failed += 1
        else:
            print(f"{ch}: sent")
    return EXIT_FAILED if failed else 0


def _dead_cmd(cfg: config.Config, action: str, channel: str | None, limit: int) -> int:
    keys = NotifyKeys(cfg.redis.key_prefix, cfg.redis.cluster)
    names = [channel] if channel else list(cfg.channels)
    if channel and channel not in cfg.channels:
        raise UsageError(f"--channel {channel!r}: no such channel")
    client = redisclient.sync_client(cfg.redis)
    try:
        for name in names:
            if action == "list":
                items = client.lrange(keys.dead(name), 0, limit - 1)
                total = client.llen(keys.dead(name))
                print(f"channel {name}: {total} dead")
                for raw in items:
                    d = _dead.decode(raw)
                    job_id = _dead.decode(d["job"]).get("id", "?") if d.get("job", "").startswith("{") else "?"
                    print(
                        f"  {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(d.get('at', 0)))}Z {job_id}: "
                        f"{d.get('reason', '')}"
                    )
            else:
                moved = skipped = 0
                now_ms = int(time.time() * 1000)
                while True:
                    # One item at a time, its removal and requeue in one transaction that watches the list:
                    # nothing lost or doubled if the notifier dead-letters or trims meanwhile.
                    with client.pipeline(transaction=True) as pipe:
                        try:
                            pipe.watch(keys.dead(name))  # type: ignore[no-untyped-call]
                            item: Any = pipe.lindex(keys.dead(name), skipped)
                            if item is None:
                                break
                            try:
                                job = jobs.decode(_dead.decode(item)["job"].encode())
                            except (msgspec.DecodeError, KeyError, AttributeError):
                                print(f"channel {name}: leaving a dead letter that is not a job")
                                skipped += 1
                                continue
                            pipe.multi()
                            pipe.lrem(keys.dead(name), 1, item)
                            pipe.rpush(keys.jobs(name), jobs.encode(msgspec.structs.replace(job, created_ms=now_ms)))
                            pipe.execute()
                            moved += 1
                        except redis.WatchError:
                            continue
                print(f"channel {name}: {moved} dead letters back in the queue")
    except redisclient.REDIS_ERRORS as exc:
        from oceanus.errors import OceanusError

        raise OceanusError(f"Redis at {config.redacted_url(cfg.redis.url)}: {exc}") from None
    finally:
        client.close()
    return 0


def main(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    action = args.action or "serve"
    if action == "serve":
        import logging

        from notifier.runner import serve

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
        if not cfg.rules:
            print("oceanus notify: no [rules.*] in the config; waiting for nothing")
        return asyncio.run(serve(cfg))
    if action == "test":
        if not args.target:
            raise UsageError("oceanus notify test RULE: name a rule")
        return asyncio.run(_test(cfg, args.target, args.set or []))
    if action == "dead":
        if args.target not in ("list", "replay"):
            raise UsageError("oceanus notify dead list|replay")
        return _dead_cmd(cfg, args.target, args.channel, args.limit)
    raise UsageError(f"unknown action {action!r}")
