"""Export all-MiniLM-L6-v2 (a ``BertModel``) to ONNX and check it against torch.

Run by ``core.models.install_model`` with the python of a throwaway build venv
that has torch, transformers, onnx and onnxruntime. Never imported by guardrag
itself and imports nothing from it.

The graph matches Chroma's ``onnx.tar.gz``: inputs ``input_ids``,
``attention_mask`` and ``token_type_ids`` (int64, dynamic batch and sequence
axes); first output ``last_hidden_state`` (float32, batch x sequence x 384).

Usage::

    python _export_onnx.py --weights DIR --out model.onnx [--report report.json]

Exit code 0 when the ONNX output matches torch, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

INPUT_NAMES = ["input_ids", "attention_mask", "token_type_ids"]
OUTPUT_NAMES = ["last_hidden_state"]
MAX_TOKENS = 256
OPSET = 17
HIDDEN_TOLERANCE = 1e-3
COSINE_TOLERANCE = 0.99999

_CHECK_TEXTS = [
    "Hello",
    "A cat sits on the mat.",
    "The quick brown fox jumps over the lazy dog near the riverbank at dawn.",
    "Guarded retrieval scans every chunk for injected instructions. " * 30,  # > 256 tokens
    "Quarterly revenue rose 5% while operating costs fell.",
]


def _tokenizer(weights: Path):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(weights / "tokenizer.json"))
    tok.enable_truncation(max_length=MAX_TOKENS)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")  # pad to the longest in the batch
    return tok


def _encode(tok, texts: list[str]) -> dict[str, np.ndarray]:
    enc = tok.encode_batch(texts)
    ids = np.array([e.ids for e in enc], dtype=np.int64)
    mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def _pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask[..., None].astype(np.float32)
    v = (hidden * m).sum(1) / np.clip(m.sum(1), 1e-9, None)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, required=True, help="folder with config.json, model.safetensors, tokenizer.json")
    parser.add_argument("--out", type=Path, required=True, help="path of the model.onnx to write")
    parser.add_argument("--report", type=Path, help="write a JSON report here")
    args = parser.parse_args(argv)

    import onnx
    import onnxruntime as ort
    import torch
    import transformers
    from transformers import BertModel

    torch.manual_seed(0)
    model, info = BertModel.from_pretrained(
        str(args.weights),
        add_pooling_layer=False,
        attn_implementation="eager",
        output_loading_info=True,
    )
    if info.get("missing_keys"):
        print(f"missing weights: {info['missing_keys']}", file=sys.stderr)
        return 1
    model.eval()

    class _LastHiddenState(torch.nn.Module):
        def __init__(self, bert: torch.nn.Module) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):  # type: ignore[no-untyped-def]
            out = self.bert(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=token_type_ids,
                return_dict=True,
            )
            return out.last_hidden_state

    wrapper = _LastHiddenState(model).eval()
    tok = _tokenizer(args.weights)
    # Trace with a padded batch so that the attention mask stays live in the graph.
    example = _encode(tok, ["A short one.", _CHECK_TEXTS[2]])
    assert (example["attention_mask"] == 0).any()
    sample = tuple(torch.from_numpy(example[n]) for n in INPUT_NAMES)
    axes = {name: {0: "batch", 1: "sequence"} for name in INPUT_NAMES + OUTPUT_NAMES}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            wrapper,
            sample,
            str(args.out),
            input_names=INPUT_NAMES,
            output_names=OUTPUT_NAMES,
            dynamic_axes=axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    onnx.checker.check_model(str(args.out))

    session = ort.InferenceSession(str(args.out), providers=["CPUExecutionProvider"])
    max_diff = 0.0
    min_cos = 1.0
    singles: list[np.ndarray] = []
    # Check: each text alone, all texts in one padded batch, and padding to 256 as Chroma does.
    batches = [[t] for t in _CHECK_TEXTS] + [list(_CHECK_TEXTS)]
    for texts in batches:
        feed = _encode(tok, texts)
        with torch.no_grad():
            ref = wrapper(*(torch.from_numpy(feed[n]) for n in INPUT_NAMES)).numpy()
        got = session.run(None, feed)[0]
        valid = feed["attention_mask"].astype(bool)
        max_diff = max(max_diff, float(np.abs(ref[valid] - got[valid]).max()))
        pooled_ref, pooled_got = _pool(ref, feed["attention_mask"]), _pool(got, feed["attention_mask"])
        min_cos = min(min_cos, float((pooled_ref * pooled_got).sum(1).min()))
        if len(texts) == 1:
            singles.append(pooled_got[0])
        else:
            alone = np.stack(singles)
            min_cos = min(min_cos, float((alone * pooled_got).sum(1).min()))
    tok.enable_padding(pad_id=0, pad_token="[PAD]", length=MAX_TOKENS)
    feed = _encode(tok, _CHECK_TEXTS[:2])
    padded = _pool(session.run(None, feed)[0], feed["attention_mask"])
    min_cos = min(min_cos, float((padded * np.stack(singles[:2])).sum(1).min()))

    report = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "opset": OPSET,
        "inputs": [i.name for i in session.get_inputs()],
        "outputs": [o.name for o in session.get_outputs()],
        "max_abs_diff_hidden": max_diff,
        "min_cosine_pooled": min_cos,
    }
    print(json.dumps(report, indent=2))
    if args.report:
        args.report.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if max_diff > HIDDEN_TOLERANCE or min_cos < COSINE_TOLERANCE:
        print(
            f"ONNX output does not match torch: max abs diff {max_diff:.3e} (tolerance {HIDDEN_TOLERANCE}), "
            f"min cosine {min_cos:.7f} (tolerance {COSINE_TOLERANCE})",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
