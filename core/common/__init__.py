"""What every tab uses: error types, stop flags, the heavy-work queue, settings, uploads and JSON caches."""
