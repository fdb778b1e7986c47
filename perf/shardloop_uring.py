"""shardloop on its io_uring backend, as a loop module for the benchmarks
(`--loop shardloop_uring`): new_event_loop() is shardloop's with
io_uring=True, so a cell fails loudly where this process cannot have a ring."""

import functools

import shardloop

new_event_loop = functools.partial(shardloop.new_event_loop, io_uring=True)
