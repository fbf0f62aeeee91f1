"""POST /v1/chat/completions: protocol (request/response models), serving, router."""
