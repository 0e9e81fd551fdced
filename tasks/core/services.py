"""The connections one process needs, made once from the settings."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import cast

from qhybrid.resources import ResourceClass, load_classes
from storage.store import ObjectStore, open_store
from tasks.core.redis_client import connect, connect_raw
from tasks.core.registry import Registry
from tasks.core.settings import Settings


@dataclass
class Services:
    settings: Settings
    registry: Registry
    store: ObjectStore
    classes: dict[str, ResourceClass]

    @classmethod
    def from_settings(cls, settings: Settings) -> Services:
        from storage.counting import ErrorCountingStore
        from tasks.core import monitoring

        registry = Registry(connect(settings.redis_url), connect_raw(settings.redis_url))
        store = ErrorCountingStore(open_store(settings.storage_url, settings.s3_endpoint_url),
                                   lambda op: monitoring.storage_error(registry.r, op))
        return cls(
            settings=settings,
            registry=registry,
            store=cast(ObjectStore, store),     # every call passes through; failures counted
            classes=load_classes(settings.resource_classes_path),
        )


@functools.lru_cache(maxsize=1)
def from_env() -> Services:
    return Services.from_settings(Settings.from_env())
