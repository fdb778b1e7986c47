// Umbrella header of the shardloop engine.
#pragma once

#include "shardloop/clock.hpp"
#include "shardloop/fd_watcher.hpp"
#include "shardloop/loop.hpp"
#include "shardloop/ring_queue.hpp"
#include "shardloop/runtime.hpp"
#include "shardloop/spsc_queue.hpp"
#include "shardloop/tcp_server.hpp"
#include "shardloop/datagram.hpp"
#include "shardloop/stream.hpp"
#include "shardloop/timer.hpp"
#include "shardloop/timer_heap.hpp"
#include "shardloop/version.hpp"
#include "shardloop/work.hpp"
