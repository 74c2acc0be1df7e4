"""A packaged adapter through granite-common's own code against reqcheck's LocalHFBackend (JSON out).

    python bench/intrinsic_roundtrip.py ADAPTER --test examples/support-polite/test.reqcheck.jsonl

The adapter is packaged as `reqcheck package` does; then for every test line granite-common's
IntrinsicsRewriter builds the request from the packaged io.yaml, its transformers helpers generate
greedily with logprobs through PEFT (the grammar constraint is left out: it needs xgrammar; the raw
output is validated against the schema instead), and IntrinsicsResultProcessor reads the result. The
same line goes through `LocalHFBackend.check`. Prints both accuracies, the largest score difference
and how many prompts had the same token ids. Needs `pip install -c constraints.txt granite-common`.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import jsonschema
from granite_common import IntrinsicsResultProcessor, IntrinsicsRewriter
from granite_common.util import chat_completion_request_to_transformers_inputs, generate_with_transformers
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


def main() -> None:
    args = arguments(__doc__)
    ref = resolve_base_model(args.basemodel)
    examples = load_examples(args.test)
    with tempfile.TemporaryDirectory(prefix="reqcheck-roundtrip-") as tmp:
        built = build_package(args.adapter, f"bench/{NAME}", intrinsic=True)
        built.write(Path(tmp))
        folder = Path(tmp) / built.subdir
        manifest = built.facts.manifest
        tokenizer = AutoTokenizer.from_pretrained(ref.path)
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(ref.path), str(folder)).eval()
        rewriter = IntrinsicsRewriter(config_file=folder / "io.yaml")
        processor = IntrinsicsResultProcessor(config_file=folder / "io.yaml")
        backend = LocalHFBackend(ref.spec, device="cpu")
        backend.add_adapter(CustomIntrinsicAdapter(model_id=tmp, intrinsic_name=NAME))

        rows, started = [], time.perf_counter()
        for example in examples:
            requirement = example.requirement or manifest.requirement or ""
            ours = backend.check(ALoraRequirement(requirement, intrinsic_name=NAME), example.item)
            messages = caller_messages(manifest.prompt, example.item)
            request = rewriter.transform({"messages": messages}, requirement=requirement)
            body = request.model_dump()
            schema = body["extra_body"].pop("structured_outputs")["json"]
            generate_input, other = chat_completion_request_to_transformers_inputs(body, tokenizer, model)
            response = generate_with_transformers(tokenizer, model, generate_input, other)
            raw = json.loads(response.choices[0].message.content)
            jsonschema.validate(raw, schema)
            result = json.loads(processor.transform(response, request).choices[0].message.content)
            rendered = render(tokenizer, example.item, manifest.prompt, requirement).input_ids
            sent = generate_input["input_tokens"][0].tolist()
            rows.append(row(example.label, ours, raw[manifest.output.field], result, sent, rendered))

    report = {
        "adapter": str(args.adapter),
        "base_model": ref.name,
        **agreement(rows, "granite_common"),
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
