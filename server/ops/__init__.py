"""Operations: auth, limits, metrics, logs, and the /health, /metrics, /v1/models routes."""
