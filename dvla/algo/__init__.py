"""Pure RL math: advantages and losses. No I/O, no global state."""
