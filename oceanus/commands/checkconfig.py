"""``oceanus check-config``: validate the config and print the streams."""

from __future__ import annotations

import argparse

from oceanus import config


def describe(cfg: config.Config) -> str:
    lines = [f"config: {cfg.source}", f"sink: {cfg.sink.kind}", f"redis: {cfg.redis.url}"]
    for stream in cfg.streams.values():
        lines.append(f"stream {stream.name} (/b/{stream.name}, /e/{stream.name}, mode {stream.mode})")
        for name, field in stream.fields.items():
            rules: list[str] = [field.type]
            if field.required:
                rules.append("required")
            if field.max_length is not None:
                rules.append(f"max_length={field.max_length}")
            if field.pattern is not None:
                rules.append(f"pattern={field.pattern}")
            if field.enum is not None:
                rules.append("enum=" + "|".join(field.enum))
            if field.min is not None or field.max is not None:
                rules.append(f"range=[{field.min}, {field.max}]")
            if field.format is not None:
                rules.append(f"format={field.format}")
            rules.extend(field.transforms)
            lines.append(f"  {name}: {', '.join(rules)}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    print(describe(config.load(args.config)))
    return 0
