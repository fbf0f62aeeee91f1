"""OpenAI-compatible HTTP server (FastAPI over vLLM's async engine).

Not built yet: until it lands, serve a model directory with vLLM's own server and
our model plugin, as the README shows.
"""
