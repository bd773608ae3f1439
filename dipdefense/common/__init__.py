"""Small pieces every package of the project shares: user-facing errors and checkpoint I/O."""
