// Parallel regions for every kernel family.
//
// When torch's OpenMP runtime (libgomp) is loaded in the process, regions run on its thread team
// (found with dlsym, never linked): two teams would fight over the cores. Otherwise (or with
// SPARSEPRUNE_THREADING=pool) a small persistent pool of our own runs them; its workers block
// on a condition variable between calls, so they cost nothing while torch runs.
#pragma once
#include <functional>

namespace sparseprune {

// Runs fn(t) for every t in [0, n) with up to n threads and waits for all of them. The calling
// thread runs t = 0; workers are created on first use and kept. Concurrent callers are serialized.
// fn must not throw.
void parallel_run(int n, const std::function<void(int)>& fn);

// "openmp (shared with torch)" or "pool".
const char* threading_backend();

}  // namespace sparseprune
