"""contend: priority staging, optimistic concurrency and zombie cleanup for asyncio services."""

from contend.backends import Backend, MemoryBackend
from contend.cleanup import (
    ArchiveCleanupHandler,
    ArchiveReader,
    CleanupHandler,
    CleanupHandlerRegistry,
    CustomCleanupHandler,
    DeferredCleanupHandler,
    ImmediateCleanupHandler,
    LazyCleanupHandler,
    NoOpCleanupHandler,
    install_archive,
)
from contend.clock import Clock, FakeClock, SystemClock
from contend.config import (
    DEFAULT_CLEANUP_CONFIG,
    CleanupConfig,
    CleanupStrategy,
    ConflictPolicy,
    ConflictResolutionConfig,
    ConflictResolutionMode,
    OCCConfig,
    PreECSConfig,
)
from contend.decorator import ConflictResolved, no_conflict_resolution, with_conflict_resolution
from contend.entity import Entity, shard_key_of
from contend.errors import (
    ConfigurationError,
    ContendError,
    CrossShardError,
    InvalidTransitionError,
    NestedCallError,
    OCCConflictError,
    OperationRejectedError,
    OutcomeUnknownError,
    RuntimeBindingError,
)
from contend.events import (
    EventBus,
    OperationCleanedEvent,
    OperationCompletedEvent,
    OperationConflictEvent,
    OperationEvent,
    OperationRejectedEvent,
    OperationRetriedEvent,
    OperationStartedEvent,
    emit,
)
from contend.health import cleanup_system_health_check
from contend.metrics import CleanupMetrics
from contend.operations import (
    ConflictResolutionOperation,
    OperationEntity,
    OperationPriority,
    OperationStatus,
)
from contend.registry import Registry
from contend.runtime import Runtime, get_runtime, reset_runtime, set_runtime, use_runtime

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_CLEANUP_CONFIG",
    "ArchiveCleanupHandler",
    "ArchiveReader",
    "Backend",
    "CleanupConfig",
    "CleanupHandler",
    "CleanupHandlerRegistry",
    "CleanupMetrics",
    "CleanupStrategy",
    "Clock",
    "ConfigurationError",
    "ConflictPolicy",
    "ConflictResolutionConfig",
    "ConflictResolutionMode",
    "ConflictResolutionOperation",
    "ConflictResolved",
    "ContendError",
    "CrossShardError",
    "CustomCleanupHandler",
    "DeferredCleanupHandler",
    "Entity",
    "EventBus",
    "FakeClock",
    "ImmediateCleanupHandler",
    "InvalidTransitionError",
    "LazyCleanupHandler",
    "MemoryBackend",
    "NestedCallError",
    "NoOpCleanupHandler",
    "OCCConfig",
    "OCCConflictError",
    "OperationCleanedEvent",
    "OperationCompletedEvent",
    "OperationConflictEvent",
    "OperationEntity",
    "OperationEvent",
    "OperationPriority",
    "OperationRejectedError",
    "OperationRejectedEvent",
    "OperationRetriedEvent",
    "OperationStartedEvent",
    "OperationStatus",
    "OutcomeUnknownError",
    "PreECSConfig",
    "Registry",
    "Runtime",
    "RuntimeBindingError",
    "SystemClock",
    "__version__",
    "cleanup_system_health_check",
    "emit",
    "get_runtime",
    "install_archive",
    "no_conflict_resolution",
    "reset_runtime",
    "set_runtime",
    "shard_key_of",
    "use_runtime",
    "with_conflict_resolution",
]
