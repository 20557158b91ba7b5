"""A client of ``prefkit serve``: score, compare and OpenRLHF's get_reward over HTTP.

>>> client = RewardClient("http://127.0.0.1:8000", api_key="secret")
>>> client.score(["Say hi"], ["Hello!"])           # (N,) rewards
>>> client.compare("Say hi", "Hello!", "Go away.")  # P(a preferred)

Requests larger than the server's ``max_items`` are split (the limit is read from
``/v1/model`` once). A request that fails to connect, times out, or gets 502,
503 or 504 is retried up to ``max_retries`` times, waiting ``backoff * 2**attempt``
seconds, or the server's Retry-After when that is longer (at most 60 s). Other
errors raise :class:`RewardClientError` with the server's message at once.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import httpx
import numpy as np

from prefkit.data.records import Text, text_to_json

RETRY_STATUS = frozenset({502, 503, 504})


class RewardClientError(Exception):
    """The server refused a request, or could not be reached after the retries.

    ``status`` is the HTTP status of the last answer; None when the server never answered
    (connection refused, timed out)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class RewardClient:
    """Talks to one ``prefkit serve`` server; reuses its connections (close it when done)."""

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 4,
        backoff: float = 0.25,
    ):
        if timeout <= 0 or max_retries < 0 or backoff < 0:
            raise ValueError(
                f"timeout must be > 0, max_retries >= 0 and backoff >= 0; got {timeout}, "
                f"{max_retries}, {backoff}"
            )
        self.url = url.rstrip("/")
        self.max_retries = max_retries
        self.backoff = backoff
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)
        self._max_items: int | None = None

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RewardClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- one request -------------------------------------------------------------------

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        failure = ""
        last_status: int | None = None  # None: the last attempt got no answer
        for attempt in range(self.max_retries + 1):
            delay = self.backoff * 2**attempt
            try:
                response = self._http.request(method, path, json=body)
            except (httpx.TransportError, httpx.TimeoutException) as error:
                failure = f"{type(error).__name__}: {error}"
                last_status = None
            else:
                if response.status_code == 200:
                    return response.json()
                failure = f"HTTP {response.status_code}: {_message(response)}"
                last_status = response.status_code
                if response.status_code not in RETRY_STATUS:
                    raise RewardClientError(f"{self.url}{path}: {failure}", response.status_code)
                retry_after = response.headers.get("Retry-After", "")
                if retry_after.strip().isdigit():
                    delay = max(delay, float(retry_after))
            if attempt < self.max_retries:
                time.sleep(min(delay, 60.0))
        raise RewardClientError(
            f"{self.url}{path}: failed after {self.max_retries + 1} attempts; last error: {failure}",
            last_status,
        )

    def _chunk_size(self, items_per_entry: int) -> int:
        if self._max_items is None:
            self._max_items = int(self.model_info()["limits"]["max_items"])
        return max(1, self._max_items // items_per_entry)

    # -- the endpoints -----------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """The answer of /health (no retries: 503 means the model is still loading)."""
        response = self._http.get("/health")
        return {"status_code": response.status_code, **response.json()}

    def model_info(self) -> dict[str, Any]:
        """What the server has loaded (kind, backbone, attributes, weights digest, limits)."""
        return self._request("GET", "/v1/model")

    def score_attributes(
        self, prompts: Sequence[Text], responses: Sequence[Text], *, normalize: bool = False
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(N,) rewards and attribute name -> (N,) values, in the order given."""
        if len(prompts) != len(responses):
            raise ValueError(
                f"got {len(prompts)} prompts and {len(responses)} responses; give one prompt per response"
            )
        rewards: list[float] = []
        attributes: dict[str, list[float]] = {}
        size = self._chunk_size(1)
        for start in range(0, len(responses), size):
            items = [
                {"prompt": text_to_json(prompt), "response": text_to_json(response)}
                for prompt, response in zip(
                    prompts[start : start + size], responses[start : start + size]
                )
            ]
            answer = self._request("POST", "/v1/score", {"items": items, "normalize": normalize})
            rewards.extend(answer["rewards"])
            for name, values in answer["attributes"].items():
                attributes.setdefault(name, []).extend(values)
        return np.asarray(rewards, dtype=np.float64), {
            name: np.asarray(values, dtype=np.float64) for name, values in attributes.items()
        }

    def score(
        self, prompts: Sequence[Text], responses: Sequence[Text], *, normalize: bool = False
    ) -> np.ndarray:
        """(N,) rewards of (prompt, response) items; texts may be conversations."""
        if not responses:
            return np.zeros(0, dtype=np.float64)
        return self.score_attributes(prompts, responses, normalize=normalize)[0]

    def compare_pairs(
        self, prompts: Sequence[Text], responses_a: Sequence[Text], responses_b: Sequence[Text]
    ) -> np.ndarray:
        """(N,) P(a preferred over b) per pair."""
        probabilities: list[float] = []
        size = self._chunk_size(2)
        for start in range(0, len(prompts), size):
            stop = start + size
            pairs = [
                {
                    "prompt": text_to_json(prompt),
                    "response_a": text_to_json(response_a),
                    "response_b": text_to_json(response_b),
                }
                for prompt, response_a, response_b in zip(
                    prompts[start:stop], responses_a[start:stop], responses_b[start:stop]
                )
            ]
            probabilities.extend(self._request("POST", "/v1/compare", pairs)["probabilities"])
        return np.asarray(probabilities, dtype=np.float64)

    def compare(self, prompt: Text, response_a: Text, response_b: Text) -> float:
        """P(response_a preferred over response_b)."""
        return float(self.compare_pairs([prompt], [response_a], [response_b])[0])

    def get_reward(
        self,
        queries: Sequence[str],
        prompts: Sequence[str] | None = None,
        labels: Sequence[Any] | None = None,
    ) -> list[float]:
        """OpenRLHF's remote reward: one reward per query (prompt followed by response)."""
        body: dict[str, Any] = {"query": list(queries)}
        if prompts is not None:
            body["prompts"] = list(prompts)
        if labels is not None:
            body["labels"] = list(labels)
        return self._request("POST", "/get_reward", body)["rewards"]


def _message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:500]
