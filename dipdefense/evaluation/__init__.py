"""The robustness evaluation harness (pure torch): attack specs, the adversarial cache,
per-image records with resume, metrics and reports."""
