"""Fine-tuning: data preparation, the three training tasks, background jobs and sharing the result."""
