"""The OpenAI-compatible client against the stand-in over loopback: retries, limits, counters."""

import asyncio

import pytest

from tests.standin_openai import running_standin
from train.eval.client import ChatClient, ChatError, EndpointConfig, user_message


def config(standin, **overrides) -> EndpointConfig:
    defaults = {"base_url": standin.base_url, "backoff_s": 0.01, "backoff_max_s": 0.05}
    return EndpointConfig(**{**defaults, **overrides})


async def ask(cfg: EndpointConfig, *texts: str):
    async with ChatClient(cfg) as client:
        calls = (client.chat([user_message(t)]) for t in texts)
        results = await asyncio.gather(*calls, return_exceptions=True)
        return client, results


def test_retries_after_injected_429_and_500(tmp_path):
    script = {"rules": [{"match": "flaky", "status": 429, "retry_after": "0", "times": 2},
                        {"match": "flaky", "status": 500, "times": 1}]}
    with running_standin(tmp_path, script) as standin:
        client, (result,) = asyncio.run(ask(config(standin), "flaky question"))
        log = standin.requests()
    assert result.text == "yes" and result.retries == 3 and result.model == "standin"
    assert [r["status"] for r in log] == [429, 429, 500, 200]
    stats = client.stats
    # 5 requests: GET /models, then 4 tries
    assert (stats.requests, stats.retries, stats.succeeded, stats.failed) == (5, 3, 1, 0)
    assert stats.statuses == {200: 2, 429: 2, 500: 1}
    assert stats.completion_tokens == 1 and stats.prompt_tokens == 2


def test_gives_up_after_max_retries_and_does_not_retry_4xx(tmp_path):
    script = {"rules": [{"match": "down", "status": 503}, {"match": "bad", "status": 400}]}
    with running_standin(tmp_path, script) as standin:
        client, (down, bad, fine) = asyncio.run(ask(config(standin, max_retries=2), "down", "bad", "fine"))
        statuses = sorted((r["user"], r["status"]) for r in standin.requests())
    assert isinstance(down, ChatError) and down.status == 503 and "gave up after 2 retries" in str(down)
    assert isinstance(bad, ChatError) and bad.status == 400 and "injected 400" in str(bad)
    assert fine.text == "yes"
    assert statuses == [("bad", 400), ("down", 503), ("down", 503), ("down", 503), ("fine", 200)]
    assert client.stats.failed == 2 and client.stats.retries == 2


def test_timeout_and_malformed_body_are_retried(tmp_path):
    script = {"rules": [{"match": "slow", "delay_s": 6, "times": 1},
                        {"match": "mangled", "raw": "{not json", "times": 1}]}
    with running_standin(tmp_path, script) as standin:
        client, (slow, mangled) = asyncio.run(ask(config(standin, timeout_s=1.5), "slow", "mangled"))
    assert slow.text == "yes" and slow.retries >= 1 and client.stats.statuses["timeout"] >= 1
    assert mangled.text == "yes" and mangled.retries >= 1


def test_concurrency_is_bounded(tmp_path):
    with running_standin(tmp_path, {"delay_s": 0.3}) as standin:
        asyncio.run(ask(config(standin, concurrency=3, model="m"), *[f"q{i}" for i in range(9)]))
        log = standin.requests()
    assert len(log) == 9 and all(r["model"] == "m" for r in log)
    assert 2 <= max(r["inflight"] for r in log) <= 3


def test_api_key_and_model_from_the_environment(tmp_path, monkeypatch):
    with running_standin(tmp_path, api_key="sekrit") as standin:
        monkeypatch.setenv("OPENAI_BASE_URL", standin.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sekrit")
        monkeypatch.setenv("OPENAI_MODEL", "from-env")
        cfg = EndpointConfig.from_env(backoff_s=0.01)
        assert cfg.base_url == standin.base_url and cfg.backoff_s == 0.01
        _, (ok,) = asyncio.run(ask(cfg, "hello"))
        assert ok.text == "yes" and ok.model == "from-env"
        _, (denied,) = asyncio.run(ask(EndpointConfig.from_env(api_key="wrong"), "hello"))
        assert isinstance(denied, ChatError) and denied.status == 401


def test_judge_env_falls_back_to_openai(monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "http://a/v1")
    monkeypatch.setenv("JUDGE_MODEL", "judge-model")
    cfg = EndpointConfig.from_env("JUDGE", "OPENAI")
    assert (cfg.base_url, cfg.model) == ("http://a/v1", "judge-model")
    assert EndpointConfig.from_env("JUDGE", "OPENAI", model="flag").model == "flag"


@pytest.mark.parametrize("value", ["3", "0"])
def test_retry_after_is_honoured_but_capped(tmp_path, value):
    waits = []

    async def fake_sleep(seconds):
        waits.append(seconds)

    async def run(standin):
        async with ChatClient(config(standin, backoff_max_s=1.0), sleep=fake_sleep) as client:
            return await client.chat([user_message("limited")])

    with running_standin(tmp_path, {"rules": [{"match": "limited", "status": 429, "retry_after": value,
                                               "times": 1}]}) as standin:
        assert asyncio.run(run(standin)).text == "yes"
    assert waits == [min(float(value), 1.0)]
