"""The session's adapters: each --adapter found with its manifest, base model and fingerprint without
loading a model; the routing of fixture lines to them (`Checker.route`, as every backend routes); and the
backends that score them, each made on the first case that is not in the cache."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest

from pytest_reqcheck.options import SessionOptions
from reqcheck.checking.adapters import CustomIntrinsicAdapter, ResolvedAdapter
from reqcheck.checking.routing import Checker, requirement_for
from reqcheck.errors import ReqcheckError
from reqcheck.formats.manifest import BaseModelRef, Manifest
from reqcheck.gating.baseline import Baseline
from reqcheck.gating.evaluation import AdapterRun
from reqcheck.gating.gates import GateSettings


@dataclass
class AdapterUnderTest:
    """One --adapter: how it was given, its files and manifest, the fingerprint its cached results are keyed
    by, and its run."""

    spec: CustomIntrinsicAdapter
    resolved: ResolvedAdapter
    fingerprint: dict[str, str]
    run: AdapterRun

    @property
    def manifest(self) -> Manifest:
        return self.resolved.manifest


class SessionAdapters:
    """Every --adapter by name, the base model they share, the line routing, and the backends."""

    def __init__(self, config: pytest.Config, options: SessionOptions) -> None:
        self.config, self.options = config, options
        baseline = Baseline.read(options.baseline) if options.baseline else None
        specs = config.getoption("adapter")
        if options.served and not options.compare:  # the server holds the model: nothing to load or convert
            self.base_model = _served_base(specs[0])
        else:
            from reqcheck.models.loading import resolve_base_model

            self.base_model = resolve_base_model(config.getoption("basemodel") or _base_spec(specs[0]))
        self.by_name = _locate(specs, self.base_model, options.settings, baseline)
        self.router = Checker({name: adapter.resolved for name, adapter in self.by_name.items()})
        self._backend: Any = None
        self._local: Any = None

    def route(self, requirement: str | None) -> str:
        """The adapter that checks a fixture line, routed as every backend routes that requirement."""
        from reqcheck.checking.requirements import req

        route = self.router.route(req(requirement or ""))
        if route.adapter is None:
            raise ReqcheckError(
                f"cannot tell which of the adapters ({', '.join(self.by_name)}) checks this line; give it a "
                "'requirement' equal to one adapter's --requirement."
            )
        return route.adapter

    def told(self, adapter: str, requirement: str | None) -> str | None:
        """What a case's model is told: the line's requirement, else the adapter's (as every backend does)."""
        return requirement_for(self.by_name[adapter].resolved, requirement)

    @property
    def backend(self) -> Any:
        """The session's backend, made on the first case not in the cache: the endpoint's, else in process."""
        if self._backend is None:
            self._backend = self._load(served=self.options.served)
        return self._backend

    @property
    def local_backend(self) -> Any:
        """The in-process LocalHFBackend that --reqcheck-compare scores every case with too (mode local)."""
        if self._local is None:
            self._local = self._load(served=False)
        return self._local

    def _load(self, served: bool) -> Any:
        """A backend with every --adapter registered; its failure stops the run once, as a usage error."""
        try:
            if served:
                from reqcheck.checking.remote import RemoteBackend

                backend = RemoteBackend(
                    list(self.options.endpoints),
                    concurrency=self.options.concurrency,
                    timeout=self.options.timeout,
                )
            else:
                from reqcheck.checking.backend import LocalHFBackend

                backend = LocalHFBackend(self.base_model.spec, device=self.options.device)
            for name, adapter in self.by_name.items():
                adapter.spec.intrinsic_name = name
                backend.add_adapter(adapter.spec)
        except ReqcheckError as exc:  # every case would fail the same way: stop once, as a usage error
            pytest.exit(f"reqcheck: {exc}", returncode=pytest.ExitCode.USAGE_ERROR)
        if served:
            self._record_server(backend)
        return backend

    def _record_server(self, backend: Any) -> None:
        from reqcheck.errors import hide_url_credentials
        from reqcheck.formats.gate_report import ServedRecord

        info = backend.info
        urls = [hide_url_credentials(url) for url in self.options.endpoints]
        record = ServedRecord(
            urls[0],
            info.engine,
            info.version,
            info.model,
            info.model_hash,
            self.options.compare,
            list(backend.on_by_default),
            info.slots,
            urls if len(urls) > 1 else [],
        )
        for adapter in self.by_name.values():
            adapter.run.served = record

    def record_failed_servers(self) -> None:
        """Put the replicas that stopped answering during the run into every adapter's served record."""
        if self._backend is None or not self.options.served:
            return
        for adapter in self.by_name.values():
            if adapter.run.served is not None:
                adapter.run.served.failed = dict(self._backend.failed)


def _locate(
    specs: list[str], base: BaseModelRef, settings: GateSettings, baseline: Baseline | None
) -> dict[str, AdapterUnderTest]:
    """Adapter name -> its files, manifest, fingerprint and run, found without loading a model."""
    found: dict[str, AdapterUnderTest] = {}
    for spec in specs:
        adapter = _adapter(CustomIntrinsicAdapter(model_id=spec), base, settings)
        name = adapter.resolved.name
        if name in found:
            raise ReqcheckError(
                f"--adapter {found[name].resolved.path} and --adapter {adapter.resolved.path} are both named "
                f"{name!r}, and the report and the cases tell adapters apart by name; copy or "
                "rename one folder so their names differ."
            )
        adapter.run.baseline = baseline
        found[name] = adapter
    return found


def _adapter(spec: CustomIntrinsicAdapter, base: BaseModelRef, settings: GateSettings) -> AdapterUnderTest:
    """One --adapter located and described; an adapter trained by Mellea needs the tokenizer (no model)."""
    from reqcheck import __version__
    from reqcheck.checking.adapters import locate_adapter, resolve_adapter
    from reqcheck.formats.gate_report import TrainingSummary
    from reqcheck.formats.manifest import MANIFEST_NAME, content_hash
    from reqcheck.models.loading import load_tokenizer

    path = locate_adapter(spec, base.short_name)
    if (path / MANIFEST_NAME).exists():
        resolved = ResolvedAdapter(spec.name, path, Manifest.read(path), "reqcheck")
    else:  # trained by Mellea: labels and prompt format need the tokenizer
        resolved = resolve_adapter(spec, base.short_name, load_tokenizer(base))
    manifest = resolved.manifest
    fingerprint = {"adapter": content_hash(path), "base": base.revision, "reqcheck": __version__}
    run = AdapterRun(
        name=spec.name,
        path=str(path),
        content_hash=fingerprint["adapter"],
        base_model=asdict(manifest.public().base_model),
        adapter_type=manifest.adapter_type,
        labels=list(manifest.labels),
        positive_labels=list(manifest.positive_labels),
        settings=settings,
        training=TrainingSummary(manifest.metrics.best_epoch, manifest.metrics.history),
    )
    return AdapterUnderTest(spec, resolved, fingerprint, run)


def _served_base(adapter: str) -> BaseModelRef:
    """The base model a served run's adapter was trained on, as its manifest records it (nothing loaded)."""
    from reqcheck.formats.manifest import MANIFEST_NAME

    path = Path(adapter).expanduser()
    if not (path / MANIFEST_NAME).exists():
        raise pytest.UsageError(
            f"--adapter {adapter} holds no {MANIFEST_NAME}; --reqcheck-endpoint checks adapters trained by "
            "reqcheck, given as their directory."
        )
    try:
        return Manifest.read(path).base_model
    except ReqcheckError as exc:
        raise pytest.UsageError(str(exc)) from None


def _base_spec(adapter: str) -> str:
    """The base model an adapter directory names (reqcheck.json, else PEFT's adapter_config.json)."""
    from reqcheck.formats.manifest import is_hub_id, named_base_model

    path = Path(adapter).expanduser()
    if not path.exists():
        if is_hub_id(adapter):
            raise pytest.UsageError(f"Cannot tell the base model of Hub adapter {adapter}; pass --basemodel.")
        raise pytest.UsageError(
            f"--adapter {adapter} does not exist; pass the directory reqcheck train wrote (with =, as "
            "--adapter=PATH) or a Hub repo id."
        )
    try:
        spec = named_base_model(path, local=True)
    except ReqcheckError as exc:
        raise pytest.UsageError(str(exc)) from None
    if not spec:
        raise pytest.UsageError(
            f"Cannot tell the base model of {adapter} (it holds no reqcheck.json or adapter_config.json "
            "naming one); pass --basemodel."
        )
    return spec
