"""The runtime: the Executable (ordered kernel launches over a planned arena, weights,
compiled libraries; saved to and loaded from one .einf file), the on-disk kernel cache,
and the profiler (per-kernel times, the side-by-side benchmark)."""
