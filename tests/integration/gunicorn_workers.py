"""gunicorn worker classes for test_process_managers.py: uvicorn's
UvicornWorker with its `loop` config set (gunicorn -k gunicorn_workers.X).
uvicorn marks its worker module deprecated in favour of the separate
uvicorn-worker package; the class is the same, and this one ships with
uvicorn."""

import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from uvicorn.workers import UvicornWorker


class AsyncioWorker(UvicornWorker):
    CONFIG_KWARGS = {"loop": "asyncio", "http": "auto"}


class ShardloopWorker(UvicornWorker):
    CONFIG_KWARGS = {"loop": "shardloop:new_event_loop", "http": "auto"}


class ShardedShardloopWorker(UvicornWorker):
    CONFIG_KWARGS = {"loop": "pid_app:sharded_loop", "http": "auto"}
