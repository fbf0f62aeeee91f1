"""Command-line flags for an OpenAI-compatible endpoint, shared by datagen and eval.

Flags win over the environment (``OPENAI_BASE_URL``, ``OPENAI_API_KEY``, ``OPENAI_MODEL``;
a judge also reads ``JUDGE_*`` first), which wins over the defaults (our server).
"""

import argparse

from train.eval.client import DEFAULT_BASE_URL, EndpointConfig


def add_endpoint_args(p: argparse.ArgumentParser, prefix: str = "", who: str = "model") -> None:
    dash = f"--{prefix}-" if prefix else "--"
    g = p.add_argument_group(f"{who} endpoint")
    g.add_argument(f"{dash}base-url", help=f"OpenAI-compatible base URL (default {DEFAULT_BASE_URL})")
    g.add_argument(f"{dash}model", help="model name (default: the first one the endpoint lists)")
    g.add_argument(f"{dash}api-key", help="API key (default: from the environment)")
    g.add_argument(f"{dash}concurrency", type=int, help="requests in flight at once (default 4)")
    g.add_argument(f"{dash}retries", type=int, help="retries on 429/5xx/timeouts (default 4)")
    g.add_argument(f"{dash}timeout", type=float, help="seconds per request (default 120)")
    g.add_argument(f"{dash}backoff", type=float, help="first back-off in seconds, doubling (default 1)")
    g.add_argument(f"{dash}max-tokens", type=int, help="max tokens per reply (default 1024)")
    g.add_argument(f"{dash}temperature", type=float, help="sampling temperature (default 0)")


def endpoint_from_args(args: argparse.Namespace, prefix: str = "", env_prefix: str = "OPENAI",
                       env_fallback: str | None = None, **defaults) -> EndpointConfig:
    key = f"{prefix.replace('-', '_')}_" if prefix else ""

    def arg(name: str):
        return getattr(args, key + name, None)

    given = {
        "base_url": arg("base_url"), "model": arg("model"), "api_key": arg("api_key"),
        "concurrency": arg("concurrency"),
        "max_retries": arg("retries"), "timeout_s": arg("timeout"), "backoff_s": arg("backoff"),
        "max_tokens": arg("max_tokens"), "temperature": arg("temperature"),
    }
    for name, value in defaults.items():
        if given.get(name) is None:
            given[name] = value
    return EndpointConfig.from_env(env_prefix, env_fallback, **given)
