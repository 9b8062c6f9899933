"""The model layer every tab shares: resolving ids, loading once (manager), presets, offline models, precision, the store."""
