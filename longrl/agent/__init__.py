"""Multi-turn policies: the memory agent reads documents longer than the window (docs/agent.md)."""

from longrl.agent.memory import (
    FORMAT_INSTRUCTION,
    MemoryAgent,
    MemoryState,
    Query,
    Trajectory,
    Turn,
    WindowError,
    fill_template,
    parse_memory_output,
    split_query,
    turn_seed,
)

__all__ = ["FORMAT_INSTRUCTION", "MemoryAgent", "MemoryState", "Query", "Trajectory", "Turn", "WindowError", "fill_template",
           "parse_memory_output", "split_query", "turn_seed"]
