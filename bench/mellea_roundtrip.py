"""A packaged adapter through Mellea 0.8's own code against reqcheck's LocalHFBackend (JSON out).

    python bench/mellea_roundtrip.py ADAPTER --test examples/support-polite/test.reqcheck.jsonl

The adapter is packaged as `reqcheck package --intrinsic` does, into a temporary offline Hugging Face
cache as a download of `bench/roundtrip` would leave it. Mellea finds it there under the base-model
folder name (`CustomIntrinsicAdapter` for an aLoRA; `IntrinsicAdapter(adapter_type=LORA)` for a LoRA,
which Mellea's CustomIntrinsicAdapter never asks for) and reads its io.yaml. For every test line Mellea's
granite formatter builds the request from that config, its transformers helpers generate greedily
through PEFT under its llguidance constraint, and its result processor and io contract read the output;
the same line goes through `LocalHFBackend.check`. Mellea's LocalHFBackend is not used to generate: with
transformers 5.24 its adapter loading needs PEFT >= 0.22. Prints both accuracies, the largest score
difference and how many prompts had the same token ids. Needs
`pip install -c constraints.txt mellea==0.8.0 llguidance`.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import huggingface_hub
import llguidance.hf
from mellea.backends.adapters import AdapterType, IntrinsicAdapter
from mellea.backends.adapters.adapter import CustomIntrinsicAdapter as MelleaCustomAdapter
from mellea.formatters.granite import IntrinsicsResultProcessor, IntrinsicsRewriter
from mellea.formatters.granite.base.util import (
    chat_completion_request_to_transformers_inputs,
    generate_with_transformers,
)
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from reqcheck.checking.adapters import CustomIntrinsicAdapter
from reqcheck.checking.backend import LocalHFBackend
from reqcheck.checking.requirements import ALoraRequirement
from reqcheck.formats.data import load_examples
from reqcheck.formats.prompting import render
from reqcheck.models.loading import resolve_base_model
from reqcheck.publishing.packaging import build_package

sys.path.insert(0, str(Path(__file__).resolve().parent))
from roundtrip import agreement, arguments, caller_messages, row  # noqa: E402

NAME = "roundtrip"
REPO = f"bench/{NAME}"
COMMIT = "0" * 40


def mellea_adapter(kind: str, base_name: str) -> IntrinsicAdapter:
    """Mellea's adapter for REPO; CustomIntrinsicAdapter also puts REPO in Mellea's catalog, for both kinds."""
    if kind == "alora":
        return MelleaCustomAdapter(model_id=REPO, base_model_name=base_name)
    try:
        MelleaCustomAdapter(model_id=REPO, base_model_name=base_name)
    except ValueError as exc:  # it looks for alora/ only; the LoRA lookup below is what a LoRA user needs
        if f"{NAME}/{base_name}/alora" not in str(exc):
            raise
    return IntrinsicAdapter(NAME, adapter_type=AdapterType.LORA, base_model_name=base_name)


def main() -> None:
    args = arguments(__doc__)
    ref = resolve_base_model(args.basemodel)
    examples = load_examples(args.test)
    with tempfile.TemporaryDirectory(prefix="reqcheck-mellea-") as tmp:
        repo = Path(tmp) / f"models--{REPO.replace('/', '--')}"
        built = build_package(args.adapter, REPO, intrinsic=True)
        built.write(repo / "snapshots" / COMMIT)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(COMMIT)
        # Mellea downloads through huggingface_hub: point it at this cache, offline
        huggingface_hub.constants.HF_HUB_CACHE = tmp
        huggingface_hub.constants.HF_HUB_OFFLINE = True
        folder = repo / "snapshots" / COMMIT / built.subdir
        kind, base_name = folder.name, folder.parent.name
        adapter = mellea_adapter(kind, base_name)
        found = Path(adapter.get_local_hf_path(base_name)) == folder
        manifest = built.facts.manifest
        tokenizer = AutoTokenizer.from_pretrained(ref.path)
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(ref.path), str(folder)).eval()
        n_vocab = max(tokenizer.vocab_size, len(tokenizer), model.config.vocab_size)
        ll_tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=n_vocab)
        rewriter = IntrinsicsRewriter(config_dict=adapter.config, model_name=NAME)
        processor = IntrinsicsResultProcessor(config_dict=adapter.config)
        backend = LocalHFBackend(ref.spec, device="cpu")
        backend.add_adapter(CustomIntrinsicAdapter(model_id=str(args.adapter), intrinsic_name=NAME))

        rows, started = [], time.perf_counter()
        for example in examples:
            requirement = example.requirement or manifest.requirement or ""
            ours = backend.check(ALoraRequirement(requirement, intrinsic_name=NAME), example.item)
            messages = caller_messages(manifest.prompt, example.item)
            request = rewriter.transform({"messages": messages}, requirement=requirement)
            generate_input, other = chat_completion_request_to_transformers_inputs(
                request.model_dump(), tokenizer, model, ll_tokenizer=ll_tokenizer
            )
            response = generate_with_transformers(tokenizer, model, generate_input, other)
            raw = json.loads(response.choices[0].message.content)
            result = adapter.io_contract.parse(
                processor.transform(response, request).choices[0].message.content
            )
            rendered = render(tokenizer, example.item, manifest.prompt, requirement).input_ids
            sent = generate_input["input_tokens"][0].tolist()
            rows.append(row(example.label, ours, raw[manifest.output.field], result, sent, rendered))

    report = {
        "adapter": str(args.adapter),
        "base_model": ref.name,
        "base_model_folder": base_name,
        "adapter_type": kind,
        "mellea_found_package": found,
        **agreement(rows, "mellea"),
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
