"""Server pieces that need no engine: templates, settings, address checks, errors, CLI."""

import ipaddress
import subprocess
import sys

import pytest
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from server.chat.protocol import ChatCompletionRequest, Message
from server.chat.templates import VICUNA_SYSTEM, choose_template, hf_messages
from server.cli import settings_from
from server.config import ServerSettings
from server.errors import validation_message
from server.media.policy import AddressPolicy, is_public


def msgs(*items) -> list[Message]:
    return [Message.model_validate(m) for m in items]


IMG = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
CONVERSATION = msgs(
    {"role": "user", "content": [IMG, {"type": "text", "text": "What is it?"}]},
    {"role": "assistant", "content": "A cat."},
    {"role": "user", "content": [{"type": "text", "text": "And this?"}, IMG]},
)


class _Tok:
    chat_template = None
    bos_token, eos_token = "<s>", "</s>"


def test_vicuna_v1_places_images_where_they_stand():
    text = choose_template("vicuna_v1", _Tok(), "llama").render(CONVERSATION)
    assert text == (
        f"{VICUNA_SYSTEM} USER: <image>\nWhat is it? ASSISTANT: A cat.</s>USER: And this?\n<image> ASSISTANT:"
    )


def test_system_message_replaces_the_default():
    text = choose_template("vicuna_v1", _Tok(), "llama").render(
        msgs({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"})
    )
    assert text == "Be brief. USER: Hi ASSISTANT:"


def test_mistral_and_chatml():
    mistral = choose_template("mistral_instruct", _Tok(), "llama").render(CONVERSATION)
    assert mistral == "[INST] <image>\nWhat is it? [/INST] A cat.</s>[INST] And this?\n<image> [/INST]"
    chatml = choose_template("chatml", _Tok(), "llama").render(CONVERSATION[:1])
    assert chatml == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<image>\nWhat is it?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_template_choice_order(tmp_path):
    assert choose_template(None, _Tok(), "mistral").name == "mistral_instruct"
    assert choose_template(None, _Tok(), "qwen2").name == "chatml"
    assert choose_template(None, _Tok(), "llama").name == "vicuna_v1"
    own = _Tok()
    own.chat_template = (
        "{% for m in messages %}{{ m.role }}:{% if m.content is string %}{{ m.content }}{% else %}"
        "{% for p in m.content %}{% if p.type == 'image' %}<image>{% else %}{{ p.text }}{% endif %}{% endfor %}"
        "{% endif %}|{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
    )
    checkpoint = choose_template(None, own, "llama")
    assert checkpoint.name == "checkpoint"
    assert checkpoint.render(CONVERSATION) == "user:<image>What is it?|assistant:A cat.|user:And this?<image>|assistant:"
    path = tmp_path / "t.jinja"
    path.write_text("{{ bos_token }}{{ messages[0].content }}")
    assert choose_template(str(path), _Tok(), "llama").render(msgs({"role": "user", "content": "x"})) == "<s>x"
    with pytest.raises(ValueError, match="neither a built-in"):
        choose_template("nope", _Tok(), "llama")


def test_hf_messages():
    assert hf_messages(CONVERSATION[:1]) == [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}
    ]


def test_images_only_in_user_messages():
    with pytest.raises(ValidationError, match="only accepted in user messages"):
        Message.model_validate({"role": "assistant", "content": [IMG]})


def test_settings_from_environment_and_flags(monkeypatch):
    monkeypatch.setenv("LLAVA_API_KEY", "k1, k2")
    monkeypatch.setenv("LLAVA_PORT", "9001")
    monkeypatch.setenv("LLAVA_MAX_INFLIGHT", "7")
    settings = settings_from(["--port", "9002"])
    assert settings.api_keys() == ["k1", "k2"] and settings.port == 9002 and settings.max_inflight == 7
    with pytest.raises(ValidationError):
        ServerSettings(log_level="loud")


@pytest.mark.parametrize(
    "address,forbidden",
    [("10.0.0.1", True), ("127.0.0.1", True), ("169.254.169.254", True), ("192.168.1.1", True),
     ("::1", True), ("fd00::1", True), ("0.0.0.0", True), ("8.8.8.8", False), ("2606:4700::1111", False),
     # not globally routable, missed by a private/loopback/link-local list: carrier-grade NAT
     # (Alibaba Cloud's metadata service), benchmarking, documentation, multicast, class E
     ("100.100.100.200", True), ("100.64.0.1", True), ("198.18.0.1", True), ("192.0.2.1", True),
     ("224.0.0.251", True), ("240.0.0.1", True), ("255.255.255.255", True),
     # IPv6 forms of internal IPv4 addresses: mapped, NAT64, 6to4
     ("::ffff:127.0.0.1", True), ("::ffff:169.254.169.254", True), ("64:ff9b::a9fe:a9fe", True),
     ("2002:7f00:1::", True), ("fe80::1", True), ("ff02::1", True)],
)
def test_private_destinations(address, forbidden):
    assert is_public(ipaddress.ip_address(address)) is not forbidden


def test_allow_list_by_name_and_network():
    policy = AddressPolicy(["images.internal", "10.1.0.0/16"])
    assert policy.allows("Images.Internal.", ipaddress.ip_address("10.9.9.9"))
    assert policy.allows("other", ipaddress.ip_address("10.1.2.3"))
    assert not policy.allows("other", ipaddress.ip_address("10.2.0.1"))


def test_validation_messages_are_readable():
    try:
        ChatCompletionRequest.model_validate(
            {"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}
        )
    except ValidationError as exc:
        message, param = validation_message(RequestValidationError(exc.errors()))
    assert message.startswith("messages[0].content[0].image_url.url: Field required")
    assert param == "messages[0].content[0].image_url.url"


def test_cli_without_a_model_says_what_to_do(tmp_path):
    result = subprocess.run([sys.executable, "-m", "server"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(__import__("pathlib").Path(
                                __file__).resolve().parents[1])})
    assert result.returncode != 0
    assert "--model DIR" in result.stderr and "models/default" in result.stderr


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",  # the classic SSTI walk
        "{% for m in messages %}{{ m.role.__class__.__init__.__globals__ }}{% endfor %}",
        "{{ messages.append(1) }}",  # immutable sandbox: no mutation of what it is given
        "{{ raise_exception('Conversation roles must alternate') }}",
        "{{ undefined_function() }}",
    ],
)
def test_hostile_or_refusing_templates_are_template_errors(tmp_path, source):
    from server.chat.templates import TemplateError

    path = tmp_path / "t.jinja"
    path.write_text(source)
    template = choose_template(str(path), _Tok(), "llama")
    with pytest.raises(TemplateError):
        template.render(CONVERSATION)


def test_refusing_on_a_network_address_without_a_key():
    from server.cli import ExposureError, check_exposure

    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        check_exposure(ServerSettings(host=host))
    check_exposure(ServerSettings(host="0.0.0.0", api_key=["k"]))
    check_exposure(ServerSettings(host="0.0.0.0", allow_unauthenticated=True))
    for host in ("0.0.0.0", "::", "192.168.1.5"):
        with pytest.raises(ExposureError, match="without an API key"):
            check_exposure(ServerSettings(host=host))



def test_listening_addresses_are_bound_before_the_engine_with_readable_errors():
    """``bind_listeners`` runs before the engine loads; its failures are start-up errors that
    name the address and the reason (the CLI prints them without a traceback)."""
    import socket

    from server.cli import bind_listeners
    from server.engine import StartupError

    for host, family in (("127.0.0.2", socket.AF_INET), ("::1", socket.AF_INET6)):
        sockets = bind_listeners(host, 0)
        try:
            assert [s.family for s in sockets] == [family]
            port = sockets[0].getsockname()[1]
            with pytest.raises(StartupError, match=f"cannot listen on {host}:{port}: address already in use"):
                bind_listeners(host, port)
        finally:
            for s in sockets:
                s.close()
    with pytest.raises(StartupError, match="cannot listen on no-such-host.invalid:8000: "):
        bind_listeners("no-such-host.invalid", 8000)


def test_a_port_left_in_time_wait_by_a_stopped_server_can_be_bound_again():
    """A server that closed its connections first leaves them in TIME_WAIT on its port for a
    minute; a restart on that port must still start."""
    import socket

    from server.cli import bind_listeners, reusable_once_listening

    # the first server's listener exactly as the server makes it (a listener bound with
    # SO_REUSEADDR from the start had hidden that its TIME_WAIT connections blocked a restart)
    [listener] = bind_listeners("127.0.0.1", 0)
    with listener:
        reusable_once_listening([listener])
        listener.listen()
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            served, _ = listener.accept()
            served.close()  # the server's side closes first: its end stays in TIME_WAIT
            assert client.recv(1) == b""
    with socket.socket() as plain, pytest.raises(OSError):
        plain.bind(("127.0.0.1", port))  # what a bind without SO_REUSEADDR meets
    for sock in bind_listeners("127.0.0.1", port):
        sock.close()


def _metaspace_tokenizer():
    """A sentencepiece-style (``▁``) tokenizer, as Llama's, trained in code."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    tok.train_from_iterator(["the answer is 2 and 3 and more words here"] * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def test_reply_start_matches_a_fresh_decode():
    from llava_model.tiny import build_tokenizer
    from server.chat.serving import ReplyText as ReplyStart

    piece = _metaspace_tokenizer()
    ids = piece.encode("2 and", add_special_tokens=False)  # '▁2', '▁and'
    start = ReplyStart(piece)
    # vLLM's in-context detokenisation: " 2", then " and"; a fresh decode says "2 and".
    assert start.fix(0, " 2", ids[:1]) + start.fix(0, " and", ids[1:]) == piece.decode(ids) == "2 and"
    streamed = ReplyStart(piece)
    assert streamed.fix(0, "", []) == "" and streamed.fix(0, " 2 and", ids) == "2 and"  # empty first delta
    assert ReplyStart(piece).fix(1, "2", ids[:1]) == "2"  # nothing to drop

    byte_level = build_tokenizer()
    ids = byte_level.encode(" 2", add_special_tokens=False)  # 'Ġ2': a fresh decode keeps the space
    assert ReplyStart(byte_level).fix(0, " 2", ids) == " 2" == byte_level.decode(ids)


def test_reply_cut_inside_a_character_ends_as_a_fresh_decode():
    """vLLM holds back the bytes of a character the last token left incomplete; when
    max_tokens ends the reply there, the text ends with U+FFFD as transformers' decode
    does, streamed or not. A complete character is left alone."""
    from llava_model.tiny import build_tokenizer
    from server.chat.serving import ReplyText

    tok = build_tokenizer()
    ids = tok.encode("aé€", add_special_tokens=False)  # a, then 2 + 3 byte-level pieces
    assert len(ids) == 6
    for cut in (2, 4, 5):
        want = tok.decode(ids[:cut])
        assert want.endswith("\ufffd")
        assert ReplyText(tok).fix(0, "a" + "\u00e9" * (cut >= 3), ids[:cut], finished=True) == want
        stream = ReplyText(tok)
        parts = [stream.fix(0, "a", ids[:1])]
        parts += [stream.fix(0, "\u00e9" if k == 2 else "", ids[k : k + 1], finished=k == cut - 1)
                  for k in range(1, cut)]
        assert "".join(parts) == want
    assert ReplyText(tok).fix(0, "a\u00e9\u20ac", ids, finished=True) == "a\u00e9\u20ac"
    assert ReplyText(tok).fix(0, "", [], finished=True) == ""


def test_an_unexpected_error_is_a_500_that_keeps_the_connection():
    """An error no handler expects is answered with an OpenAI-shaped 500 and the connection
    stays usable. Starlette re-raises after its own 500, and uvicorn then dropped the
    connection without ``Connection: close``: an SDK re-using it had its next request fail."""
    import json
    import socket
    import threading
    import time

    import uvicorn

    from server.app import build_app
    from server.cli import bind_listeners

    app = build_app(ServerSettings())

    @app.get("/raise")
    async def _raise():
        raise RuntimeError("a defect")

    [listener] = bind_listeners("127.0.0.1", 0)
    port = listener.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 20
        while not server.started and time.time() < deadline:
            time.sleep(0.05)
        assert server.started
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            for attempt in range(2):  # the second on the same connection
                conn.sendall(b"GET /raise HTTP/1.1\r\nHost: x\r\n\r\n")
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = conn.recv(65536)
                    assert chunk, f"connection closed before response {attempt + 1}"
                    head += chunk
                status_line, _, rest = head.partition(b"\r\n")
                assert b" 500 " in status_line, status_line
                headers, _, body = rest.partition(b"\r\n\r\n")
                length = int(next(h.split(b":")[1] for h in headers.split(b"\r\n")
                                  if h.lower().startswith(b"content-length")))
                while len(body) < length:
                    body += conn.recv(65536)
                error = json.loads(body)["error"]
                assert error["type"] == "server_error" and "a defect" not in error["message"]
                time.sleep(0.3)  # time for the server to have dropped the connection, as it did
    finally:
        server.should_exit = True
        thread.join(20)
