"""The ``oceanus import`` CronJob in every overlay: one run at a time, the source URL
from a Secret, hardened like the other pods."""

from __future__ import annotations

import pytest

from tests.deploy import manifests as m


@pytest.mark.parametrize("target", m.OVERLAYS)
def test_import_cronjob(target: str) -> None:
    job = m.find(m.kustomize(target), "CronJob", "oceanus-import")
    spec = job["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["enableServiceLinks"] is False
    assert pod["automountServiceAccountToken"] is False
    assert pod["restartPolicy"] == "Never"
    assert pod["securityContext"]["runAsNonRoot"] is True
    (c,) = pod["containers"]
    assert c["args"] == ["import", "run", "--config", "/etc/oceanus/oceanus.toml"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    (env,) = c["env"]
    assert env == {"name": "SHOP_DB_URL", "valueFrom": {"secretKeyRef": {"name": "oceanus-shop-db", "key": "url"}}}
