"""RemoteBackend: checks through served base models and adapters (llama-server or vLLM), no torch.

`LocalHFBackend`'s API (`add_adapter`, `route`, `check`, `check_batch`, `classify`, `judge`, `generate`,
`default_to_constraint_checking_alora`), usable by `Session` and the pytest plugin, for machines that
hold no model: a CPU-only CI runner gating against a GPU server, or a check next to the generator.

Each check is the chat completion that granite-common's `IntrinsicsRewriter` builds from the adapter's
io.yaml (the one `reqcheck package` writes), sent with the engine's adapter selection (`engines`, one
class per engine): llama-server's `"lora": [{"id": N, "scale": 1.0}]` with N the `/lora-adapters` entry
whose `task_name` names this adapter's content hash (`reqcheck export` writes it), or vLLM's `model` set
to the LoRA module name. How one server is asked and read is `replica.Replica`'s.

One URL or several: every URL is a replica of the same base model and adapters (checked when the backend
starts and when an adapter is added, naming the one that differs), with its own connection pool and
`concurrency` requests in flight. Checks are spread over them (`spreading`); a replica that stops
answering leaves the run, its unfinished checks go to the others, and `failed` says which and why.
Busy or failing servers are first retried with backoff (see `endpoint.Endpoint`).

The prompt is the server's: a context longer than the server's context window is an error there, not
cut from its start as in process.
"""

from __future__ import annotations

from collections.abc import Sequence

from reqcheck.checking.adapters import CustomIntrinsicAdapter, ResolvedAdapter, locate_adapter
from reqcheck.checking.endpoint import Endpoint, ServerInfo
from reqcheck.checking.replica import TOKENIZER_PROBE, Replica
from reqcheck.checking.routing import Checker, Context, requirement_for
from reqcheck.checking.spreading import spread
from reqcheck.errors import ReqcheckError
from reqcheck.formats.manifest import MANIFEST_NAME, Manifest, short_model_name
from reqcheck.formats.prompting import INTRINSIC_RENDERER, Messages


class RemoteBackend(Checker):
    """Requirement checks through OpenAI-compatible servers that serve the base model and the adapters.

    `url` is a server's root (e.g. http://127.0.0.1:8080), or a list of them, replicas of one another;
    `concurrency` requests are in flight at once to each; `timeout` is each request's deadline in seconds,
    every retry, wait and byte of a slow answer included; `retries` more attempts after a 429, 5xx, timeout
    or dropped connection. `info` is what the first server reported; `failed` maps each replica that
    stopped answering during the run to its one-sentence reason.
    """

    def __init__(
        self,
        url: str | Sequence[str],
        concurrency: int = 4,
        timeout: float = 120.0,
        retries: int = 3,
        api_key: str | None = None,
    ) -> None:
        if concurrency < 1:
            raise ReqcheckError(f"Concurrency must be at least 1, not {concurrency}; pass e.g. 4.")
        urls = [url] if isinstance(url, str) else list(url)
        if not urls:
            raise ReqcheckError(
                "RemoteBackend needs at least one server URL; pass e.g. http://127.0.0.1:8080."
            )
        self.replicas = [Replica(u, concurrency, timeout, retries, api_key) for u in _distinct(urls)]
        _check_same_server(self.replicas)
        self.concurrency = concurrency
        self.failed: dict[str, str] = {}
        super().__init__()
        # registered adapters that every request naming no adapter gets (their global scale is not 0)
        self.on_by_default: list[str] = []

    @property
    def info(self) -> ServerInfo:
        """What the first server reported about itself (every replica reported the same engine and model)."""
        return self.replicas[0].info

    @property
    def endpoint(self) -> Endpoint:
        """The first server's endpoint."""
        return self.replicas[0].endpoint

    @property
    def urls(self) -> list[str]:
        """Every replica's URL, credentials hidden."""
        return [r.shown for r in self.replicas]

    @property
    def engine(self) -> str:
        return self.info.engine

    @property
    def timeout(self) -> float:
        """Each request's deadline in seconds (`Endpoint` keeps it)."""
        return self.endpoint.timeout

    def add_adapter(self, adapter: CustomIntrinsicAdapter) -> ResolvedAdapter:
        """Register an adapter every replica serves; refuses one a replica lacks, would misapply, or has
        another base for, in one sentence naming that replica."""
        path = locate_adapter(adapter, short_model_name(adapter.base_model_name or ""))
        if not (path / MANIFEST_NAME).exists():
            raise ReqcheckError(
                f"Adapter {adapter.name} has no {MANIFEST_NAME}; a served check needs an adapter trained by "
                "reqcheck (check Mellea adapters in process with LocalHFBackend)."
            )
        manifest = Manifest.read(path)
        if manifest.prompt.renderer != INTRINSIC_RENDERER:
            raise ReqcheckError(
                f"Adapter {adapter.name} was trained with --renderer {manifest.prompt.renderer}, whose prompt "
                f"a server cannot build; retrain it with --renderer {INTRINSIC_RENDERER} to check it served."
            )
        if adapter.positive_labels:
            manifest.positive_labels = list(adapter.positive_labels)
        if adapter.name in self.adapters:
            raise ReqcheckError(
                f"An adapter named {adapter.name!r} is already registered; pass another intrinsic_name."
            )
        resolved = ResolvedAdapter(adapter.name, path, manifest, "reqcheck")
        on_by_default = [replica.register(resolved) for replica in self.replicas]
        if any(on_by_default):
            self.on_by_default.append(resolved.name)
        self.adapters[resolved.name] = resolved
        return resolved

    # checking

    def _scores(
        self,
        via: str,
        name: str | None,
        contexts: list[Context],
        requirements: list[str],
        labels: list[str],
    ) -> tuple[list[dict[str, float]], list[str]]:
        if via == "adapter":
            return self.classify(name, contexts, requirements), [""] * len(contexts)
        return self.judge(contexts, requirements, labels), [""] * len(contexts)

    def classify(
        self, adapter_name: str, contexts: list[Context], requirements: list[str | None] | None = None
    ) -> list[dict[str, float]]:
        """The adapter's probability for each of its labels, per context, read from the served logprobs."""
        adapter = self.adapters.get(adapter_name)
        if adapter is None:
            raise ReqcheckError(
                f"No adapter named {adapter_name!r} is registered; add it with backend.add_adapter."
            )
        requirements = list(requirements) if requirements is not None else [None] * len(contexts)
        jobs = [(c, requirement_for(adapter, r)) for c, r in zip(contexts, requirements, strict=True)]
        return spread(
            self.replicas, lambda replica, job: replica.classify_one(adapter, *job), jobs, self.failed
        )

    def judge(
        self, contexts: list[Context], requirements: list[str | None], labels: list[str] | None = None
    ) -> list[dict[str, float]]:
        """The base model's probability for each label, asked the in-process judge's question."""
        labels = labels or ["yes", "no"]
        jobs = list(zip(contexts, requirements, strict=True))
        return spread(self.replicas, lambda replica, job: replica.judge_one(*job, labels), jobs, self.failed)

    def generate(self, messages: Messages, max_new_tokens: int = 200) -> str:
        """The served base model's greedy reply (no adapter applied)."""
        return spread(
            self.replicas, lambda replica, _: replica.generate(messages, max_new_tokens), [None], self.failed
        )[0]

    def close(self) -> None:
        """Stop the request threads (the backend is unusable afterwards)."""
        for replica in self.replicas:
            replica.close()


def _distinct(urls: list[str]) -> list[str]:
    """The URLs, refusing one named twice (its checks would count twice against one server's limit)."""
    roots = [Endpoint(u, 1).url for u in urls]
    for i, root in enumerate(roots):
        if root in roots[:i]:
            raise ReqcheckError(
                f"The endpoint {Endpoint(urls[i], 1).shown} is named twice; name each replica once."
            )
    return urls


def _check_same_server(replicas: list[Replica]) -> None:
    """Refuse replicas that are not one another's copies: another engine, model width, vocabulary or tokenizer
    than the first, named in one sentence."""
    first, others = replicas[0], replicas[1:]
    tokens = first.tokenize(TOKENIZER_PROBE) if others else None
    for other in others:
        sizes = [(r.info.meta.get("n_embd"), r.info.meta.get("n_vocab")) for r in (first, other)]
        if (
            other.info.engine != first.info.engine
            or (None not in sizes[0] + sizes[1] and sizes[0] != sizes[1])
            or other.tokenize(TOKENIZER_PROBE) != tokens
        ):
            raise ReqcheckError(
                f"The server at {other.shown} runs {other.info.engine} with {other.info.model or 'a model'}, "
                f"not the base model the one at {first.shown} runs ({first.info.engine}, "
                f"{first.info.model or 'a model'}: another engine, width or tokenizer); serve the same base "
                "model and adapters on every replica."
            )
