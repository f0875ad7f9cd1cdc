"""`dvpo eval judge` against a real OpenAI-compatible HTTP server started on loopback by the test."""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from dvpo.cli import main
from dvpo.stage_options import LlmJudgeConfig
from dvpo.eval.llm_judge import (PAIRWISE_SYSTEM_PROMPT, SYSTEM_PROMPT, EndpointError, ReplyCache, chat_url,
                                 parse_score, run_llm_judge)

SECRET = "sk-test-0123456789-secret"
FAST = 0.001  # backoff base in seconds: retries stay quick


def absolute_reply(system: str, user: str) -> str:
    """Scores a response by how often it says "good" (at most 5); "weird" responses get no score."""
    answer = user.split("<response>: ", 1)[1]
    if "weird" in answer:
        return "I would rather not give a number."
    return f"Score: {min(answer.count('good'), 5)} Evaluation evidence: counted the word good."


def pairwise_reply(system: str, user: str) -> str:
    """Always prefers the response holding MARKER, whichever position it is shown in."""
    a, b = re.fullmatch(r"<Question>: .*?\n\n<Response A>: (.*)\n\n<Response B>: (.*)", user, re.S).groups()
    winner = "A" if "MARKER" in a else "B" if "MARKER" in b else "tie"
    return f"Winner: {winner} Evaluation evidence: it has the marker."


class FakeEndpoint:
    """What the handler serves and what it saw: requests, failures to return first, in-flight peak."""

    def __init__(self):
        self.requests: list[dict] = []
        self.failures: list[int | str] = []  # HTTP statuses (or "slow") answered before any success
        self.delay = 0.0
        self.lock = threading.Lock()
        self.in_flight = self.max_in_flight = 0
        self.url = ""

    def reply(self, system: str, user: str) -> str:
        return pairwise_reply(system, user) if system == PAIRWISE_SYSTEM_PROMPT else absolute_reply(system, user)


def make_handler(fake: FakeEndpoint):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with fake.lock:
                fake.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                failure = fake.failures.pop(0) if fake.failures else None
                fake.in_flight += 1
                fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
            reply = None
            try:
                time.sleep(fake.delay)
                if failure == "slow":
                    time.sleep(0.5)  # longer than the client's timeout in the test
                elif failure == 401:
                    reply = (401, {"error": {"message": f"Incorrect API key provided: {SECRET}"}})
                elif failure is not None:
                    reply = (failure, {"error": {"message": "busy"}}, {"Retry-After": "0"})
                elif self.path != "/v1/chat/completions":
                    reply = (404, {"error": {"message": "no such route"}})
                else:
                    messages = body["messages"]
                    content = fake.reply(messages[0]["content"], messages[1]["content"])
                    reply = (200, {"id": "x", "object": "chat.completion", "model": body["model"],
                                   "choices": [{"index": 0, "finish_reason": "stop",
                                                "message": {"role": "assistant", "content": content}}]})
            finally:  # before the reply leaves: once it arrives the client may send its next request at once
                with fake.lock:
                    fake.in_flight -= 1
            if reply is not None:
                self._send(*reply)

        def _send(self, status, payload, headers=None):
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    return Handler


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64  # socketserver's default backlog of 5 drops concurrent connects for a second

    def handle_error(self, request, client_address):
        pass  # a client that timed out leaves a broken pipe behind; that is the point of the test


@pytest.fixture
def endpoint():
    fake = FakeEndpoint()
    server = QuietServer(("127.0.0.1", 0), make_handler(fake))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    yield fake
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def no_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def config(endpoint, tmp_path, generations, **overrides):
    return LlmJudgeConfig(generations=generations, endpoint=endpoint.url, model="judge-model",
                          out=str(tmp_path / "judge.json"), **overrides)


def read_jsonl(path):
    return [json.loads(line) for line in open(path)]


def test_absolute_scores_are_parsed_and_aggregated(endpoint, tmp_path):
    conversation = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "first"},
                    {"role": "assistant", "content": "ok"}, {"role": "user", "content": "What is good?"}]
    gens = write_rows(tmp_path / "gens.jsonl", [
        {"prompt": "q1", "completion": "good good"},
        {"prompt": "q2", "completion": "good"},
        {"prompt": "q3", "completion": "good good good good good good good"},
        {"prompt": conversation, "completion": "nothing", "sample": 3},
    ])
    summary = run_llm_judge(config(endpoint, tmp_path, gens))

    assert (summary["rows"], summary["scored"], summary["errors"]) == (4, 4, 0)
    assert summary["mean"] == pytest.approx(2.0)  # scores 2, 1, 5 (capped), 0
    assert summary["std"] == pytest.approx((14 / 3) ** 0.5)
    assert summary["sem"] == pytest.approx(summary["std"] / 2)
    assert summary["score_counts"] == {"0": 1, "1": 1, "2": 1, "3": 0, "4": 0, "5": 1}
    assert json.loads((tmp_path / "judge.json").read_text()) == summary
    rows = read_jsonl(tmp_path / "judge.rows.jsonl")
    assert [r["score"] for r in rows] == [2, 1, 5, 0]
    assert rows[3]["sample"] == 3 and rows[3]["prompt"] == conversation

    bodies = [r["body"] for r in endpoint.requests]
    assert {r["path"] for r in endpoint.requests} == {"/v1/chat/completions"}
    assert all(b["model"] == "judge-model" and b["temperature"] == 0.0 and b["max_tokens"] == 256 for b in bodies)
    assert all(b["messages"][0] == {"role": "system", "content": SYSTEM_PROMPT} for b in bodies)
    users = sorted(b["messages"][1]["content"] for b in bodies)
    assert "<Question>: q2\n\n<response>: good" in users
    assert "<Question>: What is good?\n\n<response>: nothing" in users  # a conversation's last user turn


def test_endpoint_url_forms():
    assert chat_url("http://h:8000/v1") == "http://h:8000/v1/chat/completions"
    assert chat_url("http://h:8000/v1/") == "http://h:8000/v1/chat/completions"
    assert chat_url("https://api.example.com/v1/chat/completions") == "https://api.example.com/v1/chat/completions"
    with pytest.raises(ValueError, match="http"):
        chat_url("h:8000/v1")


def test_key_is_sent_but_never_logged_or_written(endpoint, tmp_path, monkeypatch, caplog, capsys):
    monkeypatch.setenv("JUDGE_KEY", SECRET)
    gens = write_rows(tmp_path / "gens.jsonl", [{"prompt": f"q{i}", "completion": "good"} for i in range(3)])
    one = write_rows(tmp_path / "one.jsonl", [{"prompt": "q", "completion": "good"}])
    with caplog.at_level(logging.DEBUG):
        run_llm_judge(config(endpoint, tmp_path, gens, api_key_env="JUDGE_KEY"))
        endpoint.failures = [401]  # whose body echoes the key, as hosted APIs do
        with pytest.raises(EndpointError) as error:
            run_llm_judge(config(endpoint, tmp_path, one, api_key_env="JUDGE_KEY", cache=str(tmp_path / "c2.jsonl")))

    assert [r["headers"]["Authorization"] for r in endpoint.requests] == [f"Bearer {SECRET}"] * 4
    assert SECRET not in str(error.value) and "***" in str(error.value)
    captured = capsys.readouterr()
    assert SECRET not in caplog.text + captured.out + captured.err
    assert "JUDGE_KEY" in caplog.text  # the log says where the key came from, not what it is
    for path in tmp_path.iterdir():
        assert SECRET not in path.read_text(), path


def test_no_key_sends_no_authorization(endpoint, tmp_path):
    gens = write_rows(tmp_path / "gens.jsonl", [{"prompt": "q", "completion": "good"}])
    run_llm_judge(config(endpoint, tmp_path, gens))
    assert "Authorization" not in endpoint.requests[0]["headers"]


def test_transient_failures_are_retried(endpoint, tmp_path):
    gens = write_rows(tmp_path / "gens.jsonl", [{"prompt": "q", "completion": "good good good"}])
    endpoint.failures = [503, 429, "slow", 502]
    summary = run_llm_judge(config(endpoint, tmp_path, gens, timeout=0.2), backoff_base=FAST)
    assert summary["mean"] == 3
    assert len(endpoint.requests) == 5


def test_retries_run_out(endpoint, tmp_path):
    gens = write_rows(tmp_path / "gens.jsonl", [{"prompt": "q", "completion": "good"}])
    endpoint.failures = [503] * 10
    with pytest.raises(EndpointError, match=r"127\.0\.0\.1.*after 2 retries.*HTTP 503"):
        run_llm_judge(config(endpoint, tmp_path, gens, max_retries=2), backoff_base=FAST)
    assert len(endpoint.requests) == 3


def test_unreachable_endpoint_is_retried_then_named(tmp_path):
    with socket.socket() as sock:  # a loopback port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    gens = write_rows(tmp_path / "gens.jsonl", [{"prompt": "q", "completion": "good"}])
    cfg = LlmJudgeConfig(generations=gens, endpoint=f"http://127.0.0.1:{port}/v1", model="m",
                         out=str(tmp_path / "judge.json"), max_retries=2)
    with pytest.raises(EndpointError, match=rf"127\.0\.0\.1:{port}/v1/chat/completions failed after 2 retries "
                       r"\(ConnectError"):
        run_llm_judge(cfg, backoff_base=FAST)


def test_client_error_fails_at_once(endpoint, tmp_path):
    gens = write_rows(tmp_path / "gens.jsonl", [{"prompt": "q", "completion": "good"}])
    endpoint.failures = [401]
    with pytest.raises(EndpointError, match=r"http://127\.0\.0\.1:\d+/v1/chat/completions refused .*HTTP 401"):
        run_llm_judge(config(endpoint, tmp_path, gens), backoff_base=FAST)
    assert len(endpoint.requests) == 1


def test_cache_makes_a_rerun_free_and_survives_a_kill(endpoint, tmp_path, caplog):
    gens = write_rows(tmp_path / "gens.jsonl", [{"prompt": f"q{i}", "completion": "good " * (i % 6)}
                                                for i in range(6)])
    cfg = config(endpoint, tmp_path, gens)
    first = run_llm_judge(cfg)
    assert len(endpoint.requests) == 6
    assert run_llm_judge(cfg) == first
    assert len(endpoint.requests) == 6  # all from the cache

    cache = tmp_path / "judge.cache.jsonl"
    lines = cache.read_text().splitlines(keepends=True)
    cache.write_text("".join(lines[:-1]) + lines[-1][:25])  # killed while writing its last line
    with caplog.at_level(logging.WARNING):
        assert run_llm_judge(cfg) == first
    assert "truncated last line" in caplog.text
    assert len(endpoint.requests) == 7  # only the lost reply is asked again
    assert len(read_jsonl(cache)) == 6  # and the cache is whole again
    assert len(ReplyCache(cache)._replies) == 6


def test_pairwise_win_rate_with_randomised_order(endpoint, tmp_path):
    prompts = [f"question {i}" for i in range(20)]
    gens = write_rows(tmp_path / "gens.jsonl", [{"prompt": p, "completion": f"MARKER answer {i}"}
                                                for i, p in enumerate(prompts)] + [{"prompt": "only ours", "completion": "x"}])
    base = write_rows(tmp_path / "base.jsonl", [{"prompt": p, "completion": f"plain answer {i}"}
                                                for i, p in reversed(list(enumerate(prompts)))]
                      + [{"prompt": "only theirs", "completion": "y"}, {"prompt": "only theirs 2", "completion": "z"}])
    summary = run_llm_judge(config(endpoint, tmp_path, gens, baseline=base, seed=1))

    assert (summary["pairs"], summary["judged"], summary["errors"]) == (20, 20, 0)
    assert (summary["win_rate"], summary["tie_rate"], summary["loss_rate"]) == (1.0, 0.0, 0.0)
    assert (summary["unmatched_generations"], summary["unmatched_baseline"]) == (1, 2)
    sent = [r["body"]["messages"] for r in endpoint.requests]
    assert all(m[0]["content"] == PAIRWISE_SYSTEM_PROMPT for m in sent)
    marker_in_a = sum(m[1]["content"].split("<Response B>")[0].count("MARKER") for m in sent)
    assert 0 < marker_in_a < 20  # both orders were shown
    assert summary["generations_shown_first"] == marker_in_a
    rows = read_jsonl(tmp_path / "judge.rows.jsonl")
    assert {r["outcome"] for r in rows} == {"win"} and {r["generations_shown_as"] for r in rows} == {"A", "B"}

    swapped = run_llm_judge(LlmJudgeConfig(generations=base, baseline=gens, endpoint=endpoint.url, model="judge-model",
                                           out=str(tmp_path / "swapped.json"), seed=1))
    assert (swapped["win_rate"], swapped["loss_rate"]) == (0.0, 1.0)


def test_concurrency_limit_is_respected(endpoint, tmp_path):
    endpoint.delay = 0.05
    gens = write_rows(tmp_path / "gens.jsonl", [{"prompt": f"q{i}", "completion": "good"} for i in range(16)])
    run_llm_judge(config(endpoint, tmp_path, gens, concurrency=4))
    assert len(endpoint.requests) == 16
    assert 1 < endpoint.max_in_flight <= 4


def test_unparsable_reply_is_an_error_not_a_score(endpoint, tmp_path, capsys):
    gens = write_rows(tmp_path / "gens.jsonl", [
        {"prompt": "q1", "completion": "good good good good"},
        {"prompt": "q2", "completion": "a weird answer"},
        {"prompt": "q3", "completion": "good good"},
    ])
    summary = run_llm_judge(config(endpoint, tmp_path, gens))
    assert (summary["rows"], summary["scored"], summary["errors"]) == (3, 2, 1)
    assert summary["mean"] == pytest.approx(3.0)
    bad = read_jsonl(tmp_path / "judge.rows.jsonl")[1]
    assert bad["score"] is None and "Score" in bad["error"] and bad["reply"] == "I would rather not give a number."
    assert "1 replies without a score" in capsys.readouterr().out
    assert parse_score("Score: 7 Evaluation evidence: great")[0] is None
    assert parse_score("Score: 4.5")[0] is None
    assert parse_score("**Score:** 4\nEvaluation evidence: fine") == (4, None)


def test_cli_end_to_end(endpoint, tmp_path, capsys):
    gens = write_rows(tmp_path / "gens.jsonl", [{"prompt": "q1", "completion": "good"},
                                                {"prompt": "q2", "completion": "good good good"}])
    out = tmp_path / "eval" / "judge.json"
    assert main(["eval", "judge", "--generations", gens, "--endpoint", endpoint.url + "/chat/completions",
                 "--model", "judge-model", "--out", str(out), "--concurrency", "2"]) == 0
    assert "mean 2.00" in capsys.readouterr().out
    assert json.loads(out.read_text())["mean"] == 2.0
    assert (tmp_path / "eval" / "judge.rows.jsonl").exists() and (tmp_path / "eval" / "judge.cache.jsonl").exists()

    endpoint.failures = [401]
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "judge", "--generations", gens, "--endpoint", endpoint.url, "--model", "other-model",
              "--out", str(out)])
    assert exit_.value.code == 2
    assert "HTTP 401" in capsys.readouterr().err


def test_rate_scores_samples_with_the_judge_and_keeps_unscored_ones_apart(endpoint, tiny_model, lab_data, tmp_path):
    """`dvpo rate --judge-endpoint`: the judge's 0-5 becomes the score; a reply without one is kept aside."""
    import dvpo.rate

    out = tmp_path / "rated.jsonl"
    prompts = tmp_path / "prompts.jsonl"
    write_rows(prompts, [{"prompt": "repeat 1 2"}, {"prompt": "sort 3 1 2"}])
    calls = []
    endpoint.reply = lambda system, user: (calls.append(user), "Score: 3 ok" if len(calls) % 2 else "no score")[1]
    main(["rate", "--prompts", str(prompts), "--model", str(tiny_model), "--samples", "2", "--max-new-tokens", "4",
          "--out", str(out), "--judge-endpoint", endpoint.url, "--judge-model", "judge-model"])
    rated = [json.loads(line) for line in out.read_text().splitlines()]
    unscored = [json.loads(line) for line in dvpo.rate.excluded_path(out).read_text().splitlines()]
    assert len(calls) == 4 and len(rated) + len(unscored) == 4 and len(rated) >= 1 and len(unscored) >= 1
    assert all(r["score"] == 3 and r["policy"] == tiny_model.name for r in rated)
    assert all(r["reason"] in ("no judge score", "empty completion") for r in unscored)
