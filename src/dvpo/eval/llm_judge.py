"""`dvpo eval judge`: judge generations with an LLM on any OpenAI-compatible chat endpoint.

Absolute mode scores every row 0-5 with the paper's Appendix D prompt; with a baseline file it
judges pairs instead (win/tie/loss of the generations against the baseline), each pair shown in
a seeded random A/B order as the paper does. Replies go to a JSONL cache as they arrive, so an
interrupted run pays only for what it lacks when run again. A reply without a parsable verdict
is an error row (counted, reported, kept with its raw text), never a score.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import logging
import math
import os
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import datetime, timezone
from pathlib import Path

import httpx2
from tqdm.auto import tqdm

from dvpo.errors import ConfigError
from dvpo.data.formats import load_rows
from dvpo.errors import DataError

logger = logging.getLogger(__name__)

# The paper's Appendix D system prompt, verbatim (its typos included).
SYSTEM_PROMPT = """Review the user’s question and the corresponding response using the additive 5-pointscoring system described below. Points are accumulated based on the satisfaction of each criterion:

- Add 1 point if the response is relevant and provides some information related to the user’s inquiry, even if it is incomplete or contains some irrelevant content.

- Add another point if the response addresses a substantial portion of the user’s question, but does not completely resolve the query or provide a direct answer.

- Award a third point if the response answers the basic elements of the user’s question in a useful way, regardless of whether it seems to have been written by an Al Assistant or if it has elements typically found in blogs or search results.

- Grant a fourth point if the response is clearly written from an Al Assistant’s perspective, addressing the user’s question directly and comprehensively, and is well-organized and helpful, even if there is slight room for improvement in clarity, conciseness or focus.

- Bestow a fifth point for a response that is impeccably tailored to the user’s question by an AI Assistant, without extraneous information, refecting expert knowledge, and demonstrating a high-quality, engaging, and insightful answer.

After examining the user’s instruction and the response, please first give the total score. Then provide a brief explanation of your total score, up to 100 words. Output with the following format: Score: {total score} Evaluation evidence: {your brief explanation here}

Remember to assess from the Al Assistant perspective, utilizing web search knowledge as necessary. To evaluate the response in alignment with this additive scoring model, we’ll systematically attribute points based on the outlined criteria."""  # noqa: E501

USER_TEMPLATE = "<Question>: {question}\n\n<response>: {answer}"

# Adapted from the Appendix D prompt for a pairwise verdict (the paper reports win rates with the
# order of the responses randomised per evaluation, but prints only the absolute prompt).
PAIRWISE_SYSTEM_PROMPT = """Review the user’s question and the two responses, A and B, and decide which response is better, using the additive 5-point criteria below. A response earns a point for each criterion it satisfies:

- It is relevant and provides some information related to the user’s inquiry.

- It addresses a substantial portion of the user’s question.

- It answers the basic elements of the user’s question in a useful way.

- It is clearly written from an AI Assistant’s perspective, addressing the user’s question directly and comprehensively, and is well-organized and helpful.

- It is impeccably tailored to the user’s question, without extraneous information, reflecting expert knowledge, and demonstrating a high-quality, engaging, and insightful answer.

The order of the two responses is random: do not let it, or the length of a response, sway your judgement. Answer tie only if neither response is better. Please first give your verdict, then a brief explanation, up to 100 words. Output with the following format: Winner: {A, B or tie} Evaluation evidence: {your brief explanation here}"""  # noqa: E501

PAIRWISE_USER_TEMPLATE = "<Question>: {question}\n\n<Response A>: {a}\n\n<Response B>: {b}"

_SCORE = re.compile(r"Score\s*:\s*\**\s*(\d+(?:\.\d+)?)", re.IGNORECASE)
_WINNER = re.compile(r"Winner\s*:\s*\**\s*(A|B|tie)\b", re.IGNORECASE)
MAX_BACKOFF_S = 60.0
MAX_RETRY_AFTER_S = 600.0  # a bogus Retry-After must not stall a run for hours


class EndpointError(ConfigError):
    """The endpoint refused a request or never answered; a ConfigError, so the CLI prints one line
    and exits 2 (a refusal is almost always a wrong URL, model name or key)."""


# ---------------------------------------------------------------- rendering and parsing


def question_text(prompt: str | list[dict]) -> str:
    """The question the judge sees: a plain prompt as is, a conversation by its last user message
    (earlier turns and system messages are context the paper's prompt has no slot for)."""
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m["role"] == "user"]
    return users[-1] if users else prompt[-1]["content"]


def answer_text(completion: str | list[dict]) -> str:
    """A response as text: a conversational completion's assistant turns joined by blank lines."""
    if isinstance(completion, str):
        return completion
    return "\n\n".join(m["content"] for m in completion)


def chat_url(endpoint: str) -> str:
    """Accept both the base URL (`.../v1`) and the full `.../v1/chat/completions` URL."""
    url = endpoint.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"--endpoint must be an http(s) URL, got {endpoint!r}")
    return url if url.endswith("/chat/completions") else url + "/chat/completions"


def parse_score(reply: str) -> tuple[int | None, str | None]:
    """(score, None) for a reply with "Score: N", N an integer 0..5; else (None, why)."""
    match = _SCORE.search(reply)
    if match is None:
        return None, "no 'Score: N' in the reply"
    value = float(match.group(1))
    if not value.is_integer() or not 0 <= value <= 5:
        return None, f"score {match.group(1)} is not an integer from 0 to 5"
    return int(value), None


def parse_winner(reply: str) -> tuple[str | None, str | None]:
    """("A" | "B" | "tie", None) for a reply with "Winner: X"; else (None, why)."""
    match = _WINNER.search(reply)
    if match is None:
        return None, "no 'Winner: A', 'Winner: B' or 'Winner: tie' in the reply"
    verdict = match.group(1)
    return ("tie" if verdict.lower() == "tie" else verdict.upper()), None


# ---------------------------------------------------------------- the endpoint


def _transient(status: int) -> bool:
    """Statuses worth retrying: request timeout, rate limit, server-side errors."""
    return status in (408, 429) or status >= 500


def _retry_after(response: httpx2.Response) -> float | None:
    """Seconds the server asked us to wait (delta-seconds or an HTTP date), if it said so."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = (email.utils.parsedate_to_datetime(value) - datetime.now(timezone.utc)).total_seconds()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


class JudgeClient:
    """One judge model behind an OpenAI-compatible endpoint; thread-safe, retries transient failures.

    The API key lives only in the request headers: it is never logged, and any echo of it in an
    error body is masked before the body reaches an error message.
    """

    def __init__(self, endpoint: str, model: str, api_key: str | None = None, *, max_retries: int = 5,
                 timeout: float = 60.0, temperature: float = 0.0, max_tokens: int = 256,
                 concurrency: int = 8, backoff_base: float = 1.0):
        self.url, self.model = chat_url(endpoint), model
        self.temperature, self.max_tokens = temperature, max_tokens
        self.max_retries, self.backoff_base = max_retries, backoff_base
        self._api_key = api_key
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx2.Client(headers=headers, timeout=timeout,
                                   limits=httpx2.Limits(max_connections=concurrency))

    def __enter__(self) -> JudgeClient:
        return self

    def __exit__(self, *exc) -> None:
        self._http.close()

    def complete(self, system: str, user: str) -> str:
        """The judge's reply to one system + user message (an empty string if it sent no text)."""
        payload = {"model": self.model, "temperature": self.temperature, "max_tokens": self.max_tokens,
                   "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]}
        response = self._post(payload)
        try:
            return response.json()["choices"][0]["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError):
            raise EndpointError(f"{self.url} answered 200 without an OpenAI chat completion: "
                                f"{self._masked(response.text)}") from None

    def _post(self, payload: dict) -> httpx2.Response:
        """POST with exponential backoff and full jitter on 429, 5xx, timeouts and connection
        errors (Retry-After honoured); any other non-2xx fails at once."""
        for attempt in range(self.max_retries + 1):
            delay = None
            try:
                response = self._http.post(self.url, json=payload)
            except httpx2.TransportError as error:  # timeouts, refused or dropped connections
                problem = f"{type(error).__name__}: {error}"
            else:
                if response.is_success:
                    return response
                problem = f"HTTP {response.status_code}: {self._masked(response.text)}"
                if not _transient(response.status_code):
                    raise EndpointError(f"{self.url} refused the request ({problem})")
                delay = _retry_after(response)
            if attempt == self.max_retries:
                break
            if delay is None:
                delay = random.uniform(0, min(self.backoff_base * 2 ** attempt, MAX_BACKOFF_S))
            logger.info("%s: %s; retry %d/%d in %.2fs", self.url, problem, attempt + 1, self.max_retries, delay)
            time.sleep(delay)
        raise EndpointError(f"{self.url} failed after {self.max_retries} retries ({problem})")

    def _masked(self, text: str, limit: int = 300) -> str:
        """The start of a response body for an error message, with any echo of the key masked."""
        if self._api_key:
            text = text.replace(self._api_key, "***")
        return text[:limit].strip()


# ---------------------------------------------------------------- the cache


class ReplyCache:
    """Judge replies keyed by request, kept in a JSONL file that grows one line per finished call.

    Each line is written whole and flushed at once, so a killed run keeps every reply it paid
    for; the only damage a kill can do is a truncated last line, which loading drops (with a
    warning) so that appending carries on from a clean file.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._replies = self._load()

    @staticmethod
    def key(model: str, system: str, user: str, temperature: float) -> str:
        """What makes two calls the same: the judge model, both messages and the temperature."""
        return hashlib.sha256(json.dumps([model, system, user, float(temperature)]).encode()).hexdigest()

    def __contains__(self, key: str) -> bool:
        return key in self._replies

    def __getitem__(self, key: str) -> str:
        return self._replies[key]

    def put(self, key: str, reply: str, model: str) -> None:
        record = json.dumps({"key": key, "model": model, "reply": reply}, ensure_ascii=False) + "\n"
        with self._lock:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(record)
            self._replies[key] = reply

    def _load(self) -> dict[str, str]:
        if not self.path.exists():
            return {}
        lines = self.path.read_bytes().splitlines(keepends=True)
        last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
        replies, offset = {}, 0
        for i, line in enumerate(lines):
            try:
                if line.strip():
                    record = json.loads(line)
                    replies[record["key"]] = record["reply"]
            except (ValueError, KeyError, TypeError):
                if i != last:
                    raise DataError(self.path, i + 1, None, "malformed judge cache line; delete the cache "
                                    "to start afresh") from None
                logger.warning("%s:%d: dropping a truncated last line (an interrupted run)", self.path, i + 1)
                os.truncate(self.path, offset)
                return replies
            offset += len(line)
        if lines and not lines[-1].endswith(b"\n"):  # killed just before the newline: end the line
            with open(self.path, "ab") as f:
                f.write(b"\n")
        return replies


def ask_all(client: JudgeClient, cache: ReplyCache, requests: list[tuple[str, str]], concurrency: int) -> list[str]:
    """The replies to (system, user) requests, in order: cached ones for free, the rest through
    `concurrency` threads, each cached the moment it arrives (also when another call fails)."""
    keys = [cache.key(client.model, system, user, client.temperature) for system, user in requests]
    todo = {key: request for key, request in zip(keys, requests) if key not in cache}
    if len(todo) < len(keys):
        logger.info("%d of %d judge calls answered from %s", len(keys) - len(todo), len(keys), cache.path)

    def call(key: str, request: tuple[str, str]) -> None:
        cache.put(key, client.complete(*request), client.model)

    pool = ThreadPoolExecutor(max_workers=concurrency)
    try:
        futures = [pool.submit(call, key, request) for key, request in todo.items()]
        for future in tqdm(as_completed(futures), total=len(futures), desc="judge", unit="call"):
            future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return [cache[key] for key in keys]


# ---------------------------------------------------------------- absolute scores


def judge_absolute(rows: list[dict], ask: Callable[[list[tuple[str, str]]], list[str]]) -> tuple[dict, list[dict]]:
    """Summary and per-row results of scoring every row 0-5 with the Appendix D prompt."""
    requests = [(SYSTEM_PROMPT, USER_TEMPLATE.format(question=question_text(row["prompt"]),
                                                     answer=answer_text(row["completion"]))) for row in rows]
    results = []
    for i, (row, reply) in enumerate(zip(rows, ask(requests))):
        score, error = parse_score(reply)
        results.append({"row": i, "prompt": row["prompt"], "sample": row.get("sample"), "score": score,
                        "error": error, "reply": reply})
    return summarise_scores([r["score"] for r in results]), results


def summarise_scores(scores: list[int | None]) -> dict:
    """Mean, sample std and sem over the parsed scores; unparsed ones are counted as errors."""
    parsed = [s for s in scores if s is not None]
    n = len(parsed)
    mean = sum(parsed) / n if n else None
    std = math.sqrt(sum((s - mean) ** 2 for s in parsed) / (n - 1)) if n > 1 else (0.0 if n else None)
    return {"mode": "absolute", "rows": len(scores), "scored": n, "errors": len(scores) - n, "mean": mean,
            "std": std, "sem": std / math.sqrt(n) if n else None,
            "score_counts": {str(k): parsed.count(k) for k in range(6)}}


# ---------------------------------------------------------------- pairwise win rate


def _by_prompt_and_sample(rows: list[dict], source: str) -> dict[tuple[str, int], dict]:
    """Rows keyed by (prompt, sample); a row without `sample` takes its prompt's occurrence count."""
    keyed, seen = {}, Counter()
    for row in rows:
        prompt = json.dumps(row["prompt"], sort_keys=True, ensure_ascii=False)
        sample = row.get("sample")
        if sample is None:
            sample = seen[prompt]
            seen[prompt] += 1
        if (prompt, sample) in keyed:
            raise DataError(source, None, "sample", f"prompt {prompt[:60]} has sample {sample} twice; "
                            "pairs are matched by prompt and sample")
        keyed[(prompt, sample)] = row
    return keyed


def match_pairs(rows: list[dict], base_rows: list[dict], source: str, base_source: str) -> tuple[list, int, int]:
    """(generations row, baseline row) pairs for the same prompt and sample, in the generations'
    order, and how many rows of each file found no partner."""
    ours, theirs = _by_prompt_and_sample(rows, source), _by_prompt_and_sample(base_rows, base_source)
    pairs = [(row, theirs[key]) for key, row in ours.items() if key in theirs]
    return pairs, len(ours) - len(pairs), len(theirs) - len(pairs)


def judge_pairwise(pairs: list[tuple[dict, dict]], ask: Callable[[list[tuple[str, str]]], list[str]],
                   seed: int) -> tuple[dict, list[dict]]:
    """Summary and per-pair results of asking which response is better, each pair in a seeded
    random A/B order; verdicts are mapped back to the generations' point of view."""
    rng = random.Random(seed)
    ours_first = [rng.random() < 0.5 for _ in pairs]
    requests = []
    for (ours, theirs), first in zip(pairs, ours_first):
        a, b = (ours, theirs) if first else (theirs, ours)
        requests.append((PAIRWISE_SYSTEM_PROMPT, PAIRWISE_USER_TEMPLATE.format(
            question=question_text(ours["prompt"]), a=answer_text(a["completion"]), b=answer_text(b["completion"]))))
    results = []
    for i, ((ours, _), first, reply) in enumerate(zip(pairs, ours_first, ask(requests))):
        winner, error = parse_winner(reply)
        outcome = None if winner is None else "tie" if winner == "tie" else \
            "win" if winner == ("A" if first else "B") else "loss"
        results.append({"pair": i, "prompt": ours["prompt"], "sample": ours.get("sample"),
                        "generations_shown_as": "A" if first else "B", "outcome": outcome, "error": error,
                        "reply": reply})
    return summarise_pairwise([r["outcome"] for r in results], sum(ours_first)), results


def summarise_pairwise(outcomes: list[str | None], shown_first: int) -> dict:
    """Win, tie and loss rates over the pairs with a parsed verdict; the rest are errors."""
    counts = Counter(outcomes)
    judged = len(outcomes) - counts[None]
    rates = {f"{k}_rate": (counts[k] / judged if judged else None) for k in ("win", "tie", "loss")}
    return {"mode": "pairwise", "pairs": len(outcomes), "judged": judged, "errors": counts[None],
            "wins": counts["win"], "ties": counts["tie"], "losses": counts["loss"], **rates,
            "generations_shown_first": shown_first}


# ---------------------------------------------------------------- the stage


def format_report(summary: dict) -> str:
    """One line for the terminal."""
    head = f"llm judge ({summary['model']})"
    if summary["mode"] == "absolute":
        line = (f"{head}: mean {summary['mean']:.2f} ± {summary['sem']:.2f} (sem) over {summary['scored']} of "
                f"{summary['rows']} rows" if summary["scored"] else f"{head}: no reply of {summary['rows']} had a score")
        return line + (f"; {summary['errors']} replies without a score" if summary["errors"] else "")
    line = (f"{head}: win {100 * summary['win_rate']:.1f}%, tie {100 * summary['tie_rate']:.1f}%, loss "
            f"{100 * summary['loss_rate']:.1f}% vs the baseline over {summary['judged']} of {summary['pairs']} pairs"
            if summary["judged"] else f"{head}: no reply of {summary['pairs']} had a verdict")
    if summary["errors"]:
        line += f"; {summary['errors']} replies without a verdict"
    if summary["unmatched_generations"] or summary["unmatched_baseline"]:
        line += (f"; unmatched rows: {summary['unmatched_generations']} generations, "
                 f"{summary['unmatched_baseline']} baseline")
    return line


def _check_options(cfg) -> None:
    for name in ("concurrency", "max_tokens"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(cfg, name)}")
    if cfg.max_retries < 0:
        raise ConfigError(f"--max-retries must be 0 or more, got {cfg.max_retries}")
    if cfg.timeout <= 0:
        raise ConfigError(f"--timeout must be positive, got {cfg.timeout}")


def run_llm_judge(cfg, backoff_base: float = 1.0) -> dict:
    """CLI entry: `dvpo eval judge`; writes the summary to --out, per-row results beside it, and
    prints one line. `backoff_base` (seconds) scales the retry waits; tests make it tiny."""
    _check_options(cfg)
    rows = load_rows(cfg.generations, "generations")
    out = Path(cfg.out)
    rows_path = out.with_suffix(".rows.jsonl")
    cache_path = Path(cfg.cache) if cfg.cache else out.with_suffix(".cache.jsonl")
    api_key = os.environ.get(cfg.api_key_env) or None
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # one INFO line per request would bury the bar
    with JudgeClient(cfg.endpoint, cfg.model, api_key, max_retries=cfg.max_retries, timeout=cfg.timeout,
                     temperature=cfg.temperature, max_tokens=cfg.max_tokens, concurrency=cfg.concurrency,
                     backoff_base=backoff_base) as client:
        logger.info("judge %s at %s (%s)", cfg.model, client.url,
                    f"key from ${cfg.api_key_env}" if api_key else f"no key: ${cfg.api_key_env} is unset")
        cache = ReplyCache(cache_path)

        def ask(requests: list[tuple[str, str]]) -> list[str]:
            return ask_all(client, cache, requests, cfg.concurrency)

        if cfg.baseline:
            pairs, unmatched, unmatched_base = match_pairs(rows, load_rows(cfg.baseline, "generations"),
                                                           cfg.generations, cfg.baseline)
            if unmatched or unmatched_base:
                logger.warning("%d generations rows and %d baseline rows have no partner (same prompt and sample) "
                               "and are not judged", unmatched, unmatched_base)
            if not pairs:
                raise DataError(cfg.generations, None, None, f"shares no prompt with {cfg.baseline}")
            summary, results = judge_pairwise(pairs, ask, cfg.seed)
            summary.update(unmatched_generations=unmatched, unmatched_baseline=unmatched_base)
        else:
            summary, results = judge_absolute(rows, ask)
    if summary["errors"]:
        logger.warning("%d judge replies had no parsable verdict; they are the rows with an 'error' in %s",
                       summary["errors"], rows_path)
    summary.update(generations=cfg.generations, baseline=cfg.baseline or None, endpoint=client.url,
                   model=cfg.model, temperature=cfg.temperature, results=str(rows_path), cache=str(cache_path))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    rows_path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in results))
    print(format_report(summary))
    return summary
