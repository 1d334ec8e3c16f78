// A small persistent thread pool shared by every kernel family.
//
// Why our own pool: torch already runs an OpenMP runtime; a second one (ours) would keep idle
// threads spinning on a 2-core machine and fight torch's. Workers here block on a condition
// variable between calls, so they cost nothing while torch runs.
#pragma once
#include <functional>

namespace sparseprune {

// Runs fn(t) for every t in [0, n) with up to n threads and waits for all of them. The calling
// thread runs t = 0; workers are created on first use and kept. Concurrent callers are serialized.
// fn must not throw.
void parallel_run(int n, const std::function<void(int)>& fn);

}  // namespace sparseprune
